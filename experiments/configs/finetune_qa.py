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

from experiments.configs.common import base_config

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
NAMED = {"fixture": FIXTURES / "squad_v1.json", "fixture_v2": FIXTURES / "squad_v2.json"}
FLAGS = {"runlocal", "tiny"}


def get_config(arg: str = "fixture"):
    parts = [p for p in (arg or "fixture").split(",") if p]
    flags = {p for p in parts if p in FLAGS}
    paths = [p for p in parts if p not in FLAGS]
    if not paths or len(paths) > 2:
        raise ValueError(f"expected TRAIN_JSON[,DEV_JSON][,runlocal][,tiny] or fixture/fixture_v2, got {arg!r}")
    if paths[0] in NAMED:
        train = dev = str(NAMED[paths[0]])
        if len(paths) > 1:
            raise ValueError(f"{paths[0]!r} uses its own file for train and validation; got extra {paths[1:]}")
    else:
        train, dev = paths[0], (paths[1] if len(paths) > 1 else None)
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
    if "tiny" in flags:
        c.model.init_from = None
        c.model.preset = "bert-tiny"
        c.data.tokenizer = "asset:minilm"
        c.optim.learning_rate = 1e-3
    if "runlocal" in flags:
        c.num_train_steps = 6
        c.batch_size = 4
        c.eval_batch_size = 8
        c.log_every = 2
        c.data.max_length = 64
        c.qa.doc_stride = 16
        c.qa.max_query_length = 24
    return c
