"""Config and data builders shared by the engine tests (``from _configs import ...``; tests/ is on sys.path).

``write_small_trec(root, data_dir, n_train, n_test)``  a ``$JAXBERT_DATA``-shaped folder with the
                                                      first rows of trec's train / test files
``set_keys(config, {"a.b": value, ...})``             dotted-key overrides of a ConfigDict
``trec_run_config(small_data, **overrides)``          the ``trec,tiny,runlocal`` classification run
                                                      on those files, quiet (no export / TensorBoard /
                                                      progress bar)
``small_contrastive_run(config)``                     a ``tiny,runlocal`` contrastive run shrunk to
                                                      3 steps and small eval sets
``peft_config(method, **options)``                    a ``config.peft`` section choosing ``method``
                                                      with those options in its own section
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from conftest import read_jsonl


def write_small_trec(root: Path, data_dir: Path, n_train: int, n_test: int) -> Path:
    """``root/trec/{train,test}.jsonl``: the first ``n_train`` / ``n_test`` records of the data pack's trec
    files (the same label set, so eval stays cheap). Returns ``root`` (use it as ``$JAXBERT_DATA``)."""
    (root / "trec").mkdir()
    for name, n in (("train.jsonl", n_train), ("test.jsonl", n_test)):
        rows = read_jsonl(data_dir / "trec" / name, n)
        (root / "trec" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def set_keys(config: Any, overrides: Mapping[str, Any]) -> Any:
    """Set every ``"a.b.c": value`` of ``overrides`` on the ConfigDict ``config``; returns it."""
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[last] = value
    return config


def trec_run_config(small_data: Path, **overrides: Any) -> Any:
    """``finetune_classification:trec,tiny,runlocal`` reading ``small_data``'s trec files, with no HF export,
    TensorBoard or progress bar, then ``overrides`` (dotted keys, e.g. ``**{"optim.freeze_embeddings": True}``)."""
    from experiments.configs.finetune_classification import get_config

    c = get_config("trec,tiny,runlocal")
    c.data.train, c.data.test = str(small_data / "trec/train.jsonl"), str(small_data / "trec/test.jsonl")
    c.export_hf = c.tensorboard = c.progress = False
    return set_keys(c, overrides)


def peft_config(method: str, **options: Any) -> Any:
    """``jaxbert.peft.default_config()`` with ``method`` and ``options`` set in ``config.peft.<its section>``."""
    from jaxbert import peft

    pc = peft.default_config()
    pc.method = method
    for k, v in options.items():
        pc[peft.METHODS[method].section][k] = v
    return pc


def small_contrastive_run(c: Any) -> Any:
    """Shrink a ``tiny,runlocal`` contrastive config further: 3 steps of 8 pairs, a 60-document /
    20-query wordnet eval (when it has one), eval batches of 32 at length 64, a log line every step,
    no progress bar or TensorBoard. Returns ``c``."""
    if "wordnet" in c.evals:
        c.evals.wordnet.corpus_limit, c.evals.wordnet.query_limit = 60, 20
    c.num_train_steps = 3
    c.batch_size = 8
    c.eval_batch_size = 32
    c.data.eval_max_length = 64
    c.progress = False
    c.tensorboard = False
    c.log_every = 1
    return c
