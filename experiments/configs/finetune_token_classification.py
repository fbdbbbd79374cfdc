r"""Fine-tune a BERT-family encoder for token classification (POS tagging / NER) on word/tag JSONL.

Run (the issue-#10 POS tagger: all-MiniLM-L6-v2 on Brown, universal tags; see the note for
the measured time on 2 CPU cores):

    python -m experiments.launch \
        --config experiments/configs/finetune_token_classification.py:brown_pos \
        --workdir runs/brown_pos_minilm

Datasets (from ``$JAXBERT_DATA``, default ``../shared/data``): ``brown_pos`` (12 universal
tags; split by document, 46,025 / 5,699 / 5,616 sentences). Append ``,runlocal`` for a
seconds-long smoke run, ``,tiny`` for a random 2-layer BERT (tests). Any JSONL with
``tokens``/``tags`` lists works by overriding the paths, e.g. a CoNLL-style NER set::

    --config.data.train=ner/train.jsonl --config.data.validation=ner/dev.jsonl \
    --config.data.test=ner/test.jsonl --config.data.labels=None   # BIO spans detected

Useful overrides: ``--config.data.label_alignment=all`` (label every word piece),
``--config.data.train_subset=20000`` (seeded random subset of sentences),
``--config.data.strict_spans=True`` (seqeval strict mode).
"""

from __future__ import annotations

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from experiments.configs.variants import smoke_run, tiny_bert
from jaxbert.data.sources import data_dir

UNIVERSAL_TAGS = (".", "ADJ", "ADP", "ADV", "CONJ", "DET", "NOUN", "NUM", "PRON", "PRT", "VERB", "X")

# name -> (train, validation, test, labels, max_length (pieces), epochs)
DATASETS = {
    "brown_pos": ("brown/pos_train.jsonl.gz", "brown/pos_validation.jsonl", "brown/pos_test.jsonl",
                  UNIVERSAL_TAGS, 64, 1.0),
}
#: ``DATASET[,runlocal][,tiny]``
ARGS = {"dataset": "brown_pos", "runlocal": False, "tiny": False}


def get_config(arg: str | None = None):
    a = parse_arg(arg, ARGS, positional=("dataset",), choices={"dataset": DATASETS})
    train, val, test, labels, max_len, epochs = DATASETS[a.dataset]
    root = data_dir()
    c = base_config("token_classification")
    c.task = "token_classification"
    c.model.init_from = "asset:minilm"
    c.data.train = str(root / train)
    c.data.validation = str(root / val)
    c.data.test = str(root / test)
    c.data.labels = labels
    c.data.max_length = max_len
    c.data.buckets = (16, 24, 32, 40, 48, 64)
    c.data.group_by_length = 50  # similar-length batches: Brown's long tail would pad most batches to 64
    # 30,000 of the 46,025 training sentences (seeded): one epoch fits the ~20-minute CPU budget;
    # --config.data.train_subset=None trains on all of them.
    c.data.label_alignment = "first"
    c.data.train_subset = 30000
    c.eval_splits = ("validation", "test")
    c.checkpoint.best_metric = "validation/accuracy"  # word-level token accuracy
    c.batch_size = 32
    c.eval_batch_size = 128
    c.num_epochs = epochs
    c.optim.learning_rate = 1e-4
    c.optim.warmup_ratio = 0.06
    c.optim.weight_decay = 0.01
    c.log_every = 50
    if a.tiny:
        tiny_bert(c)
    if a.runlocal:
        smoke_run(c, steps=8, batch_size=8, eval_batch_size=64)
        c.data.max_length = 32
        c.data.buckets = (16, 32)
        c.data.train_subset = 200
    return c
