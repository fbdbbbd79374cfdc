r"""Fine-tune a BERT-family encoder for extractive QA on SQuAD v1.1 / v2.0 JSON files.

Run on the official files (no QA set ships with the data pack; pass your own paths):

    python -m experiments.launch \
        --config experiments/configs/finetune_qa.py:/data/squad/train-v1.1.json,/data/squad/dev-v1.1.json \
        --workdir runs/squad_minilm

The argument is ``TRAIN_JSON[,DEV_JSON][,flags]``; the dev file is the ``validation`` split
(EM/F1 with the official normalisation; the best checkpoint by ``validation/f1``). v2.0 files
(``is_impossible``) switch the no-answer option on. ``fixture`` / ``fixture_v2`` train and
evaluate on the hand-written files in ``tests/fixtures/`` (a pipeline check, not a benchmark);
``,runlocal`` makes it a seconds-long smoke run, ``,tiny`` uses a random 2-layer BERT::

    python -m experiments.launch --config experiments/configs/finetune_qa.py:fixture,runlocal,tiny \
        --workdir /tmp/qa_smoke

Window settings (HF ``run_qa`` defaults): ``data.max_length=384``, ``qa.doc_stride=128``
(overlap), ``qa.max_query_length=64``, ``qa.max_answer_length=30``.
"""

from __future__ import annotations

from pathlib import Path

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from experiments.configs.variants import smoke_run, tiny_bert

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
NAMED = {"fixture": FIXTURES / "squad_v1.json", "fixture_v2": FIXTURES / "squad_v2.json"}
#: ``TRAIN_JSON[,DEV_JSON][,runlocal][,tiny]`` (``train`` may be a name of :data:`NAMED`)
ARGS = {"train": "fixture", "dev": None, "runlocal": False, "tiny": False}


def get_config(arg: str | None = None):
    a = parse_arg(arg, ARGS, positional=("train", "dev"))
    if a.train in NAMED:
        train = dev = str(NAMED[a.train])
        if a.dev is not None:
            raise ValueError(f"{a.train!r} uses its own file for train and validation; got extra {a.dev!r}")
    else:
        train, dev = a.train, a.dev
    c = base_config("question_answering")
    c.task = "question_answering"
    c.model.init_from = "asset:minilm"
    c.data.train = train
    c.data.validation = dev
    c.data.test = None
    c.eval_splits = ("validation",) if dev else ()
    c.checkpoint.best_metric = "validation/f1" if dev else ""
    c.data.max_length = 384
    c.qa.doc_stride = 128
    c.qa.max_query_length = 64
    c.qa.max_answer_length = 30
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 2.0
    c.optim.learning_rate = 1e-4
    c.optim.warmup_ratio = 0.1
    c.optim.weight_decay = 0.01
    c.log_every = 50
    if a.tiny:
        tiny_bert(c)
    if a.runlocal:
        smoke_run(c, steps=6, batch_size=4, eval_batch_size=8)
        c.data.max_length = 64
        c.qa.doc_stride = 16
        c.qa.max_query_length = 24
    return c
