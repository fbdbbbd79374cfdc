r"""Fine-tune a BERT-family encoder for multi-label classification (sigmoid per label).

Run (all-MiniLM-L6-v2 on ``wordnet_pos``: which parts of speech can each word take):

    python -m experiments.launch \
        --config experiments/configs/finetune_multilabel.py:wordnet_pos \
        --workdir runs/wordnet_pos_minilm

``wordnet_pos`` is derived from the data pack on first use (WordNet 3.0 POS sets of 11,615
common English words; see ``jaxbert/data/derived.py``), 9,292 / 1,162 / 1,161 words. Per-label
thresholds are tuned on validation and applied to test; test reports ``micro_f1``/``macro_f1``
with them and at a fixed 0.5 (``micro_f1@0.5``). Any JSONL with a list-valued label field
works: ``--config.data.train=... --config.data.label_field=labels --config.data.labels=None``.
Append ``,runlocal`` for a smoke run, ``,tiny`` for a random 2-layer BERT.
"""

from __future__ import annotations

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from experiments.configs.variants import smoke_run, tiny_bert

DATASETS = {"wordnet_pos": ("text", None, "labels", ("adjective", "adverb", "noun", "verb"), 16, 3.0)}

#: ``DATASET[,runlocal][,tiny]``
ARGS = {"dataset": "wordnet_pos", "runlocal": False, "tiny": False}


def get_config(arg: str | None = None):
    from jaxbert.data.derived import derived_dataset

    a = parse_arg(arg, ARGS, positional=("dataset",), choices={"dataset": DATASETS})
    text_field, pair_field, label_field, labels, max_len, epochs = DATASETS[a.dataset]
    folder = derived_dataset(a.dataset)
    c = base_config("multilabel")
    c.task = "multilabel"
    c.model.init_from = "asset:minilm"
    c.data.train, c.data.validation, c.data.test = (str(folder / f"{s}.jsonl") for s in ("train", "validation", "test"))
    c.data.text_field, c.data.pair_field, c.data.label_field = text_field, pair_field, label_field
    c.data.labels = labels
    c.data.max_length = max_len
    c.eval_splits = ("validation", "test")
    c.checkpoint.best_metric = "validation/macro_f1"
    c.batch_size = 32
    c.eval_batch_size = 256
    c.num_epochs = epochs
    c.optim.learning_rate = 1e-4
    c.optim.warmup_ratio = 0.06
    c.log_every = 50
    if a.tiny:
        tiny_bert(c)
    if a.runlocal:
        smoke_run(c, steps=8, batch_size=8)
        c.data.train_subset = 200
    return c
