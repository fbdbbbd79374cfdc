r"""Fine-tune a BERT-family encoder for sequence classification on a JSONL dataset.

Run (the README's main job: real all-MiniLM-L6-v2 on rotten_tomatoes, ~10 min on 2 CPU cores):

    python -m experiments.launch \
        --config experiments/configs/finetune_classification.py:rotten_tomatoes \
        --workdir runs/rt_minilm

Datasets (from ``$JAXBERT_DATA``, default ``../shared/data``): rotten_tomatoes, trec (coarse
labels), sms_spam, bbc_news. Append ``,runlocal`` for a seconds-long smoke run
(``...:trec,runlocal``); ``,tiny`` swaps in a randomly initialised 2-layer BERT (tests). Override anything with ``--config.key=value``, e.g.
``--config.optim.learning_rate=3e-5 --config.mesh='(("data",2),("fsdp",4),("tensor",1))'``.
"""

from __future__ import annotations

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from experiments.configs.variants import smoke_run, tiny_bert
from jaxbert.data.sources import data_dir

# name -> (train, validation, test, label_field, labels, text max_length, epochs)
DATASETS = {
    "rotten_tomatoes": ("rotten_tomatoes/train.jsonl", "rotten_tomatoes/validation.jsonl",
                        "rotten_tomatoes/test.jsonl", "label", (0, 1), 64, 1.0),
    "trec": ("trec/train.jsonl", None, "trec/test.jsonl", "coarse_label",
             ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"), 48, 3.0),
    "sms_spam": ("sms_spam/train.jsonl", None, "sms_spam/test.jsonl", "label", (0, 1), 96, 1.0),
    "bbc_news": ("bbc_news/train.jsonl", None, "bbc_news/test.jsonl", "label",
                 ("business", "entertainment", "politics", "sports", "tech"), 256, 2.0),
}
#: ``DATASET[,runlocal][,tiny]``
ARGS = {"dataset": "rotten_tomatoes", "runlocal": False, "tiny": False}


def get_config(arg: str | None = None):
    return build(parse_arg(arg, ARGS, positional=("dataset",), choices={"dataset": DATASETS}))


def build(a):
    """The config of parsed arguments ``a`` (keys of :data:`ARGS`; ``peft.py`` builds on it)."""
    train, val, test, label_field, labels, max_len, epochs = DATASETS[a.dataset]
    root = data_dir()
    c = base_config("classification")
    c.task = "classification"
    c.model.init_from = "asset:minilm"
    c.data.train = str(root / train)
    c.data.validation = str(root / val) if val else None
    c.data.test = str(root / test)
    c.data.label_field = label_field
    c.data.labels = labels
    c.data.max_length = max_len
    # Pad each training batch only to the smallest of these lengths that fits it (single host):
    # at most 3 compiled step shapes, far fewer pad tokens on short texts.
    c.data.buckets = tuple(b for b in (max_len // 2, 3 * max_len // 4, max_len) if b >= 16)
    c.eval_splits = tuple(s for s, p in (("validation", val), ("test", test)) if p)
    c.checkpoint.best_metric = f"{c.eval_splits[0]}/accuracy"
    c.batch_size = 32
    c.eval_batch_size = 128
    c.num_epochs = epochs
    c.optim.learning_rate = 1e-4  # MiniLM-sized encoders like a larger LR than BERT-base
    c.optim.warmup_ratio = 0.06
    c.optim.weight_decay = 0.01
    c.log_every = 20
    if a.tiny:  # a randomly initialised 2-layer BERT with MiniLM's tokenizer (tests, smoke runs)
        tiny_bert(c)
    if a.runlocal:
        smoke_run(c, steps=8, batch_size=8, eval_batch_size=64)
        c.data.max_length = 32
        c.data.buckets = None
    return c
