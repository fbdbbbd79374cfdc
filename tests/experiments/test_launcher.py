"""The launcher end to end: ``python -m experiments.launch`` on ``trec,tiny,runlocal``.

One real run (subprocess, ~10-20 s) is shared by every assert below: exit status, the workdir's
files (config.json, metrics.jsonl fields, eval_results.json, TensorBoard events, checkpoints)
and the HF export, which ``transformers`` loads and whose logits match jaxbert's own forward
pass on the final checkpoint's params.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = "experiments/configs/finetune_classification.py"
TREC_LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
TRAIN_FIELDS = {"step", "split", "loss", "accuracy", "learning_rate", "tokens_per_sec",
                "examples_per_sec", "elapsed_s"}


def launcher_env(tmp_path_factory, **extra) -> dict:
    """Subprocess env: CPU, and a persistent XLA compilation cache shared by this session's runs."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "jax_compilation_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """``(workdir, completed process)`` of one default ``trec,tiny,runlocal`` run."""
    workdir = tmp_path_factory.mktemp("launcher") / "run"
    cmd = [sys.executable, "-m", "experiments.launch", "--config", f"{CONFIG}:trec,tiny,runlocal",
           "--workdir", str(workdir)]
    proc = subprocess.run(cmd, cwd=REPO, env=launcher_env(tmp_path_factory, JAXBERT_DATA=str(data_dir)),
                          capture_output=True, text=True, timeout=300)
    return workdir, proc


def test_exit_status_and_summary(run):
    workdir, proc = run
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["status"] == "done" and summary["step"] == 8
    assert Path(summary["export_dir"]) == workdir / "export"


def test_workdir_files(run):
    workdir, proc = run
    assert proc.returncode == 0, proc.stderr[-4000:]

    config = json.loads((workdir / "config.json").read_text())
    assert config["num_train_steps"] == 8 and config["batch_size"] == 8
    assert config["data"]["labels"] == TREC_LABELS

    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]  # runlocal: log_every=2
    for r in train:
        assert TRAIN_FIELDS <= set(r), sorted(TRAIN_FIELDS - set(r))
        assert all(np.isfinite(r[k]) for k in TRAIN_FIELDS - {"step", "split"})
        assert r["tokens_per_sec"] > 0 and r["examples_per_sec"] > 0 and r["elapsed_s"] > 0
    assert train[0]["learning_rate"] > train[-1]["learning_rate"] > 0  # linear decay
    test_rows = [r for r in rows if r["split"] == "test"]
    assert len(test_rows) == 1 and test_rows[0]["step"] == 8

    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["step"] == 8
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    assert results["test"]["accuracy"] == test_rows[0]["accuracy"]
    assert results["test"]["num_examples"] == 538  # the whole trec test split

    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

    from jaxbert.train.checkpoint import Checkpointer
    with Checkpointer(workdir) as ckpt:
        assert ckpt.all_steps() == [8]


def test_hf_export_matches_final_state(run, read_texts):
    workdir, proc = run
    assert proc.returncode == 0, proc.stderr[-4000:]
    import torch
    import transformers

    export = workdir / "export"
    hf = transformers.BertForSequenceClassification.from_pretrained(str(export)).eval()
    assert hf.config.id2label == dict(enumerate(TREC_LABELS))
    assert hf.config.label2id == {lab: i for i, lab in enumerate(TREC_LABELS)}

    tok = transformers.AutoTokenizer.from_pretrained(str(export))
    questions = read_texts("trec/test.jsonl", n=6)
    enc = tok(questions, padding=True, truncation=True, max_length=32, return_tensors="np")
    with torch.no_grad():
        hf_logits = hf(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()

    # jaxbert's own forward pass with the params of the final checkpoint.
    from experiments.configs.finetune_classification import get_config
    from jaxbert.tasks.classification import MODEL_INPUTS, ClassificationTask
    from jaxbert.train.checkpoint import Checkpointer

    config = get_config("trec,tiny,runlocal")
    task = ClassificationTask(config)
    with Checkpointer(workdir) as ckpt:
        state, extra = ckpt.restore()
    assert extra["label_map"]["labels"] == TREC_LABELS
    jx_logits = np.asarray(task.model.apply({"params": state["params"]},
                                            *(enc[k].astype(np.int32) for k in MODEL_INPUTS),
                                            deterministic=True)["logits"])
    assert jx_logits.shape == hf_logits.shape == (len(questions), len(TREC_LABELS))
    np.testing.assert_allclose(hf_logits, jx_logits, atol=1e-4, rtol=0)
    assert (hf_logits.argmax(-1) == jx_logits.argmax(-1)).all()


def test_config_docstrings_hold_their_command():
    """Every config module with ``get_config`` documents the command that runs it."""
    configs = []
    for path in sorted((REPO / "experiments" / "configs").glob("*.py")):
        module = ast.parse(path.read_text())
        if not any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in module.body):
            continue
        configs.append(path.name)
        doc = ast.get_docstring(module) or ""
        assert "python -m experiments.launch" in doc, f"{path}: docstring lacks the launch command"
        assert f"experiments/configs/{path.name}" in doc, f"{path}: docstring does not name its own file"
    assert "finetune_classification.py" in configs


def _launch(args, tmp_path_factory, data_dir):
    cmd = [sys.executable, "-m", "experiments.launch", *args]
    return subprocess.run(cmd, cwd=REPO, env=launcher_env(tmp_path_factory, JAXBERT_DATA=str(data_dir)),
                          capture_output=True, text=True, timeout=120)


def test_config_file_runs_once_and_overrides_are_checked(tmp_path, tmp_path_factory, data_dir):
    """The launcher executes the config file once; overrides are checked against it and applied."""
    config = tmp_path / "counting_config.py"
    config.write_text(
        "import sys\n"
        "print('EXECUTED', file=sys.stderr)\n"
        "from experiments.configs.finetune_classification import get_config as _get\n"
        "def get_config(arg=None):\n"
        "    print('GET_CONFIG', arg, file=sys.stderr)\n"
        "    return _get(arg)\n")
    # No --workdir: main() stops right after absl parsed the flags (and applied the override).
    proc = _launch(["--config", f"{config}:trec,tiny,runlocal", "--config.seed=3"], tmp_path_factory, data_dir)
    assert proc.returncode != 0 and "--workdir is required" in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("EXECUTED") == 1 and proc.stderr.count("GET_CONFIG trec,tiny,runlocal") == 1

    proc = _launch([f"--config={config}:trec,tiny", "--config.optim.learnin_rate=3"], tmp_path_factory, data_dir)
    assert "unknown config key 'optim.learnin_rate'" in proc.stderr and "'optim.learning_rate'" in proc.stderr
    proc = _launch(["--config", f"{CONFIG}:trec,fast"], tmp_path_factory, data_dir)
    assert proc.returncode != 0 and "unknown config flags ['fast']; known: dataset (" in proc.stderr
    proc = _launch(["--workdir", str(tmp_path / "w")], tmp_path_factory, data_dir)
    assert proc.returncode != 0 and "--config PATH[:ARG] is required" in proc.stderr
