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

from experiments.configs.common import base_config

DATASETS = {"simlex999": ("word1", "word2", "score", 16, 10.0)}


def get_config(arg: str = "simlex999"):
    from jaxbert.data.derived import derived_dataset

    parts = [p for p in (arg or "simlex999").split(",") if p]
    name, flags = parts[0], set(parts[1:])
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    unknown = flags - {"runlocal", "tiny"}
    if unknown:
        raise ValueError(f"unknown config flags {sorted(unknown)}; known: ['runlocal', 'tiny']")
    text_field, pair_field, label_field, max_len, epochs = DATASETS[name]
    folder = derived_dataset(name)
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
    if "tiny" in flags:
        c.model.init_from = None
        c.model.preset = "bert-tiny"
        c.data.tokenizer = "asset:minilm"
        c.optim.learning_rate = 1e-3
    if "runlocal" in flags:
        c.num_train_steps = 8
        c.batch_size = 8
        c.eval_batch_size = 50
        c.log_every = 2
    return c
