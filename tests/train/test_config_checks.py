"""Config values are range-checked before anything is built, and ``checkpoint.best_metric`` must name a
metric the task reports (jaxbert/train/config_checks.py, the ``metric_names`` of every task)."""

from __future__ import annotations

import ast
import importlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import read_jsonl
from experiments.configs.common import base_config
from jaxbert.train.config_checks import ConfigValueError, check_best_metric, check_config

REPO = Path(__file__).resolve().parents[2]


def _set(c, key, value):
    *parents, last = key.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[last] = value
    return c


# (task, key, invalid value): every value the issue lists, and the neighbours of each range.
INVALID = [
    ("classification", "optim.learning_rate", math.nan),
    ("classification", "optim.learning_rate", -1e-3),
    ("classification", "optim.learning_rate", math.inf),
    ("classification", "optim.learning_rate", 0.0),
    ("classification", "num_train_steps", 0),
    ("classification", "num_train_steps", -5),
    ("classification", "num_epochs", 0.0),
    ("classification", "eval_every", -1),
    ("classification", "checkpoint.every", -1),
    ("classification", "checkpoint.keep_last", 0),
    ("classification", "checkpoint.keep_best", -1),
    ("classification", "checkpoint.best_mode", "maximum"),
    ("classification", "label_smoothing", 2.0),
    ("classification", "label_smoothing", 1.0),
    ("classification", "log_every", 0),
    ("classification", "grad_accum_steps", 0),
    ("classification", "batch_size", 0),
    ("classification", "eval_batch_size", 0),
    ("classification", "data.max_length", 0),
    ("classification", "data.max_length", 1),
    ("classification", "seed", -1),
    ("classification", "model.overrides.hidden_dropout_prob", 1.0),
    ("classification", "model.overrides.attention_probs_dropout_prob", -0.1),
    ("classification", "optim.warmup_ratio", 1.5),
    ("classification", "optim.warmup_steps", -1),
    ("classification", "optim.end_lr_factor", 2.0),
    ("classification", "optim.b2", 1.0),
    ("classification", "optim.weight_decay", math.nan),
    ("classification", "optim.layerwise_lr_decay", 0.0),
    ("mlm", "mlm.rate", 0.0),
    ("mlm", "mlm.mask_prob", 1.5),
    ("question_answering", "qa.doc_stride", -1),
    ("question_answering", "qa.max_answer_length", 0),
    ("multilabel", "multilabel.default_threshold", 1.5),
    ("regression", "data.train_subset", 0),
]


@pytest.mark.parametrize("task, key, value", INVALID, ids=[f"{k}={v!r}" for _, k, v in INVALID])
def test_invalid_value_is_refused_naming_key_value_and_range(task, key, value):
    c = _set(base_config(task), key, value)
    with pytest.raises(ConfigValueError) as e:
        check_config(c)
    msg = str(e.value)
    assert msg.startswith(f"{key}={value!r}: must be "), msg


@pytest.mark.parametrize("key, value", [
    ("eval_every", 0), ("checkpoint.every", 0), ("num_train_steps", None), ("num_train_steps", 1),
    ("checkpoint.keep_best", 0), ("checkpoint.keep_last", None), ("optim.grad_clip_norm", 0.0),
    ("optim.grad_clip_norm", None), ("optim.warmup_steps", 0), ("label_smoothing", 0.0),
    ("data.max_length", 2), ("model.overrides.hidden_dropout_prob", 0.0),
])
def test_documented_edge_values_pass(key, value):
    check_config(_set(base_config("classification"), key, value))


def test_every_task_default_config_passes():
    from jaxbert.tasks import task_names
    for name in task_names():
        check_config(base_config(name))


def _docstring_configs():
    folder = REPO / "experiments" / "configs"
    for path in sorted(folder.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        for name, arg in re.findall(r"--config[ =]experiments/configs/(\w+)\.py(?::(\S*))?", doc):
            if name == path.stem:
                yield name, arg


def test_every_shipped_config_passes(data_dir):
    """Each ``--config experiments/configs/X.py:ARG`` of a config docstring is in range, and its
    best_metric names one of its eval splits (the metric itself is checked against the built task)."""
    seen, bad = 0, []
    for name, arg in _docstring_configs():
        module = importlib.import_module(f"experiments.configs.{name}")
        c = module.get_config(arg) if arg else module.get_config()
        try:
            check_config(c)
        except ConfigValueError as e:
            bad.append(f"{name}:{arg}: {e}")
        best = c.checkpoint.best_metric
        if best and best.split("/", 1)[0] not in c.eval_splits:
            bad.append(f"{name}:{arg}: best_metric {best!r} not in eval_splits {c.eval_splits}")
        seen += 1
    assert seen >= 20 and not bad, bad


# ---------------------------------------------------------------------------- best_metric
NAMES = {"validation": {"accuracy", "loss"}, "test": {"accuracy", "loss"}}


@pytest.mark.parametrize("best, fragment", [
    ("validation/acuracy", "split 'validation' reports no metric 'acuracy'"),
    ("valdation/accuracy", "'valdation' is not an evaluated split"),
    ("accuracy", "must be '<split>/<metric>'"),
])
def test_best_metric_typo_is_refused_listing_valid_names(best, fragment):
    c = _set(base_config("classification"), "checkpoint.best_metric", best)
    with pytest.raises(ConfigValueError) as e:
        check_best_metric(c, NAMES, ("validation", "test"))
    msg = str(e.value)
    assert fragment in msg and "'test/accuracy'" in msg and "'validation/loss'" in msg, msg


def test_best_metric_of_a_configured_split_without_data_is_said_not_refused():
    said = []
    c = base_config("classification")  # validation/accuracy
    check_best_metric(c, {"test": {"accuracy"}}, ("validation", "test"), say=said.append)
    assert len(said) == 1 and "'validation' has no data" in said[0], said
    check_best_metric(_set(c, "checkpoint.best_metric", ""), {}, ())  # no ranking: nothing to check
    check_best_metric(_set(c, "checkpoint.best_metric", "test/accuracy"), {"test": {"accuracy"}}, ())


# ---------------------------------------------------------------------------- the Trainer refuses
@pytest.fixture(scope="module")
def trec_small(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("trec")
    for name, n in (("train.jsonl", 64), ("test.jsonl", 16)):
        rows = read_jsonl(data_dir / "trec" / name, n)
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _trec_config(root, **overrides):
    from experiments.configs.finetune_classification import get_config
    c = get_config("trec,tiny,runlocal")
    c.data.train, c.data.test = str(root / "train.jsonl"), str(root / "test.jsonl")
    c.export_hf = c.tensorboard = c.progress = False
    for k, v in overrides.items():
        _set(c, k, v)
    return c


def test_trainer_refuses_before_step_1(trec_small, tmp_path):
    from jaxbert.train.loop import Trainer
    workdir = tmp_path / "run"
    with pytest.raises(ConfigValueError, match=r"^grad_accum_steps=0: must be an int >= 1"):
        Trainer(_trec_config(trec_small, grad_accum_steps=0), workdir)
    assert not workdir.exists()  # refused before the workdir was made
    with pytest.raises(ConfigValueError) as e:  # needs the task: refused once it is built, before training
        Trainer(_trec_config(trec_small, **{"checkpoint.best_metric": "test/acc"}), workdir)
    assert "'test/accuracy'" in str(e.value) and "'test/macro_f1'" in str(e.value), str(e.value)
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------- declared == reported
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _feature_outputs(task, split, rng, **arrays):
    n, off = len(task.eval_features[split]), task.eval_offsets[split]
    out = {"feature_index": np.arange(n) + off, "weights": np.ones(n, np.float32)}
    out.update({k: f(n) for k, f in arrays.items()})
    return out


def _outputs_and_sums(task, split, rng):
    """Synthetic predict_fn outputs of one split, shaped like the task's (what eval_metrics reads)."""
    L = getattr(task, "max_length", 16)
    sums = {"loss": 3.0, "accuracy": 2.0, "weight": 4.0}
    name = task.name
    if name == "classification":
        n = len(task.eval_sources[split])
        k = task.label_map.num_classes
        return {"predictions": rng.integers(0, k, n), "labels": rng.integers(0, k, n),
                "weights": np.ones(n, np.float32)}, sums
    if name == "regression":
        return _feature_outputs(task, split, rng, predictions=lambda n: rng.normal(size=n),
                                targets=lambda n: rng.normal(size=n)), sums
    if name == "multilabel":
        k = task.label_map.num_classes
        return _feature_outputs(task, split, rng, probs=lambda n: rng.uniform(size=(n, k)),
                                targets=lambda n: rng.integers(0, 2, (n, k)).astype(np.float32)), sums
    if name == "token_classification":
        k = task.label_map.num_classes
        return _feature_outputs(task, split, rng, predictions=lambda n: rng.integers(0, k, (n, L))), sums
    if name == "question_answering":
        return _feature_outputs(task, split, rng, start_logits=lambda n: rng.normal(size=(n, L)),
                                end_logits=lambda n: rng.normal(size=(n, L))), sums
    if name == "mlm":
        return {}, {**sums, "real_tokens": 10.0, "row_tokens": 12.0}
    if name in ("contrastive", "llm_embedding"):
        n, off = len(task.eval_sources[split]), task.eval_offsets[split]
        return {"embeddings": rng.normal(size=(n, 8)), "index": np.arange(n) + off}, sums
    raise AssertionError(f"no synthetic outputs for task {name!r}")


def _token_data(tmp, data_dir):
    root = tmp / "tokens"
    root.mkdir()
    brown = {s: read_jsonl(data_dir / "brown" / f"pos_{s}.jsonl{'.gz' if s == 'train' else ''}", 12)
             for s in ("train", "validation", "test")}
    ner = [{"tokens": ["Ann", "met", "Bo", "Lee"], "tags": ["B-PER", "O", "B-PER", "I-PER"]},
           {"tokens": ["hello", "there"], "tags": ["O", "O"]}] * 4
    return ({f"data.{s}": _write_jsonl(root / f"pos_{s}.jsonl", rows) for s, rows in brown.items()},
            {"data.train": _write_jsonl(root / "ner.jsonl", ner), "data.validation": str(root / "ner.jsonl"),
             "data.test": None, "data.labels": ("B-PER", "I-PER", "O"), "eval_splits": ("validation",),
             "data.train_subset": None})


@pytest.fixture(scope="module")
def task_cases(tmp_path_factory, data_dir, trec_small):
    tmp = tmp_path_factory.mktemp("tasks")
    pos, ner = _token_data(tmp, data_dir)
    rt = {f"data.{s}": _write_jsonl(tmp / f"rt_{s}.jsonl", read_jsonl(data_dir / "rotten_tomatoes" / f"{s}.jsonl", 12))
          for s in ("train", "validation", "test")}
    return [
        ("finetune_classification", "trec,tiny,runlocal",
         {"data.train": str(trec_small / "train.jsonl"), "data.test": str(trec_small / "test.jsonl")}),
        ("finetune_classification", "rotten_tomatoes,tiny,runlocal", rt),  # two classes: also 'f1'
        ("finetune_regression", "tiny,runlocal", {}),
        ("finetune_multilabel", "tiny,runlocal", {}),
        ("finetune_token_classification", "tiny,runlocal", pos),  # plain tags
        ("finetune_token_classification", "tiny,runlocal", ner),  # BIO: span P/R/F1 too
        ("finetune_qa", "fixture,runlocal,tiny", {}),
        ("pretrain_mlm", "mini,random,runlocal", {}),
        ("sentence_embedding", "simlex,tiny,runlocal", {}),  # similarity sets
        ("sentence_embedding", "wordnet,tiny,runlocal", {}),  # retrieval set
    ]


def test_declared_metric_names_are_what_eval_metrics_reports(task_cases):
    """Each task's ``metric_names(split)`` equals the keys its ``eval_metrics`` returns for that split."""
    from jaxbert.tasks import get_task
    rng = np.random.default_rng(0)
    checked = set()
    for module, arg, overrides in task_cases:
        c = importlib.import_module(f"experiments.configs.{module}").get_config(arg)
        for k, v in overrides.items():
            _set(c, k, v)
        task = get_task(c.task)(c)
        declared = task.eval_metric_names()
        assert declared and set(declared) == set(task.eval_sources), (module, arg, declared)
        for split, names in declared.items():
            outputs, sums = _outputs_and_sums(task, split, rng)
            reported = set(task.eval_metrics(outputs, sums))
            assert reported == set(names), (module, arg, split, sorted(reported ^ set(names)))
        checked.add(c.task)
    assert len(checked) == 7, checked
