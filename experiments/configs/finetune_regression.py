r"""Fine-tune a BERT-family encoder for regression (one score per text or text pair), MSE loss.

Run (all-MiniLM-L6-v2 as a cross-encoder on SimLex-999 word-pair similarity):

    python -m experiments.launch \
        --config experiments/configs/finetune_regression.py:simlex999 \
        --workdir runs/simlex_minilm

``simlex999`` is derived from the data pack on first use (seeded 699 / 150 / 150 split of the
999 pairs, score 0-10; ``jaxbert/data/derived.py``). Reports ``mse``/``rmse`` (score units),
``pearson`` and ``spearman`` (the number SimLex results are quoted in). Any JSONL with a numeric
field works: ``--config.data.train=... --config.data.text_field=... --config.data.label_field=...``.
Append ``,runlocal`` for a smoke run, ``,tiny`` for a random 2-layer BERT.
"""

from __future__ import annotations

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from experiments.configs.variants import smoke_run, tiny_bert

DATASETS = {"simlex999": ("word1", "word2", "score", 16, 10.0)}

#: ``DATASET[,runlocal][,tiny]``
ARGS = {"dataset": "simlex999", "runlocal": False, "tiny": False}


def get_config(arg: str | None = None):
    from jaxbert.data.derived import derived_dataset

    a = parse_arg(arg, ARGS, positional=("dataset",), choices={"dataset": DATASETS})
    text_field, pair_field, label_field, max_len, epochs = DATASETS[a.dataset]
    folder = derived_dataset(a.dataset)
    c = base_config("regression")
    c.task = "regression"
    c.model.init_from = "asset:minilm"
    c.data.train, c.data.validation, c.data.test = (str(folder / f"{s}.jsonl") for s in ("train", "validation", "test"))
    c.data.text_field, c.data.pair_field, c.data.label_field = text_field, pair_field, label_field
    c.data.max_length = max_len
    c.eval_splits = ("validation", "test")
    c.checkpoint.best_metric = "validation/spearman"
    c.batch_size = 16
    c.eval_batch_size = 150
    c.num_epochs = epochs
    c.optim.learning_rate = 5e-5
    c.optim.warmup_ratio = 0.1
    c.log_every = 20
    if a.tiny:
        tiny_bert(c)
    if a.runlocal:
        smoke_run(c, steps=8, batch_size=8, eval_batch_size=50)
    return c
