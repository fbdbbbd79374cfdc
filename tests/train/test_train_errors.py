"""Bad input stops a run with a clear error, and no failure loses the previous checkpoint.

A module-scoped good run (4 steps, checkpoints at steps 2 and 4) provides the workdir each
failure is aimed at (directly, or a copy for the failures that touch the checkpoints); after
every failure both checkpoints must still be there and restore to the same arrays.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from _configs import trec_run_config, write_small_trec
from conftest import read_jsonl

REPO = Path(__file__).resolve().parents[2]
CONFIG = "experiments/configs/finetune_classification.py"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_dir):
    return write_small_trec(tmp_path_factory.mktemp("data"), data_dir, 200, 40)


def _config(small_data, **overrides):
    return trec_run_config(small_data, **{"num_train_steps": 4, "log_every": 1, "checkpoint.every": 2, **overrides})


def _snapshot(workdir: Path) -> dict[int, dict[str, np.ndarray]]:
    """``{step: {leaf path: array}}`` of every finalized checkpoint in ``workdir``."""
    from jaxbert.train.checkpoint import Checkpointer
    out = {}
    with Checkpointer(workdir) as ckpt:
        for step in ckpt.all_steps():
            state, _ = ckpt.restore(step=step)
            out[step] = {jax.tree_util.keystr(p): np.asarray(x)
                         for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    return out


def _assert_same_checkpoints(want: dict, got: dict) -> None:
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step].keys() == want[step].keys()
        differ = [k for k in want[step] if not np.array_equal(want[step][k], got[step][k])]
        assert not differ, f"step {step}: {differ[:5]} changed"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, small_data):
    """``(workdir, snapshot)`` of a finished 4-step run with checkpoints at steps 2 and 4."""
    from jaxbert.train.loop import Trainer
    workdir = tmp_path_factory.mktemp("errors") / "good"
    assert Trainer(_config(small_data), workdir).run()["status"] == "done"
    snap = _snapshot(workdir)
    assert sorted(snap) == [2, 4]
    from jaxbert.train.checkpoint import Checkpointer
    with Checkpointer(workdir) as ckpt:  # the final step is saved after the final eval, with it
        assert 0.0 <= ckpt.metrics(4)["test/accuracy"] <= 1.0
    return workdir, snap


@pytest.fixture
def intact(good_run):
    """The good workdir; after the test its checkpoints must be unchanged."""
    workdir, snap = good_run
    yield workdir
    _assert_same_checkpoints(snap, _snapshot(workdir))


def _launch(workdir: Path, *args: str, env: dict | None = None, timeout: float = 120):
    cmd = [sys.executable, "-m", "experiments.launch", "--config", f"{CONFIG}:trec,tiny,runlocal",
           "--workdir", str(workdir), *args]
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------

def test_unknown_config_key_suggests_the_right_one(intact, small_data):
    proc = _launch(intact, "--config.optim.learnin_rate=1", env={"JAXBERT_DATA": str(small_data)})
    assert proc.returncode != 0
    assert "unknown config key 'optim.learnin_rate'" in proc.stderr, proc.stderr[-2000:]
    assert "optim.learning_rate" in proc.stderr.split("unknown config key", 1)[1]


def test_missing_data_file_names_the_path(intact, small_data, tmp_path):
    from jaxbert.train.loop import Trainer
    missing = tmp_path / "no_such_dir" / "train.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Trainer(_config(small_data, **{"data.train": str(missing)}), intact)


def test_label_outside_the_label_set_names_file_line_and_value(intact, small_data, tmp_path):
    from jaxbert.train.loop import Trainer
    rows = read_jsonl(small_data / "trec/train.jsonl", 5)
    rows[2]["coarse_label"] = "WEATHER"  # line 3
    bad = tmp_path / "bad_label.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as e:
        Trainer(_config(small_data, **{"data.train": str(bad)}), intact)
    msg = str(e.value)
    assert str(bad) in msg and "line 3" in msg and "'WEATHER'" in msg, msg
    assert "coarse_label" in msg and "ABBR" in msg  # the field and the valid labels


def test_batch_not_divisible_by_data_parallel_size(intact, small_data):
    proc = _launch(intact, "--config.batch_size=12",
                   env={"JAXBERT_DATA": str(small_data), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert proc.returncode != 0
    assert re.search(r"batch_size=12 is not divisible by the data-parallel size 8", proc.stderr), \
        proc.stderr[-3000:]


def test_corrupt_checkpoint_is_named_and_the_previous_one_survives(good_run, small_data, tmp_path):
    from jaxbert.train.checkpoint import CheckpointError
    from jaxbert.train.loop import Trainer
    good, snap = good_run
    workdir = tmp_path / "run"
    shutil.copytree(good, workdir)
    state_dir = workdir / "checkpoints" / "4" / "state"
    data_files = [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for p in data_files:  # bit rot in the array data of the latest step
        p.write_bytes(b"\x00garbage" * 8)
    (workdir / "eval_results.json").unlink()  # unfinished: a finished workdir is a no-op, it restores nothing

    with pytest.raises(CheckpointError) as e:  # (the default, fallback=True, resumes from step 2)
        Trainer(_config(small_data, **{"checkpoint.fallback": False}), workdir).run()
    msg = str(e.value)
    assert "step 4" in msg and str(workdir / "checkpoints" / "4") in msg, msg

    # The failed run deleted nothing and wrote no new step; step 2 restores exactly.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    from jaxbert.train.checkpoint import Checkpointer
    with Checkpointer(workdir) as ckpt:
        state, extra = ckpt.restore(step=2)
    got = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    _assert_same_checkpoints({2: snap[2]}, {2: got})
    assert "data" in extra


def test_nan_loss_names_step_and_metric_and_keeps_the_last_checkpoint(good_run, small_data, tmp_path):
    from jaxbert.train.loop import Trainer
    good, snap = good_run
    workdir = tmp_path / "run"
    shutil.copytree(good, workdir)
    # Resume the finished 4-step run to 8 steps with an absurd learning rate: the step-5
    # update blows the params up, a later loss is NaN, before the next checkpoint (step 6).
    cfg = _config(small_data, num_train_steps=8, allow_config_change=True, **{"optim.learning_rate": 1e30})
    with pytest.raises(FloatingPointError) as e:
        Trainer(cfg, workdir).run()
    msg = str(e.value)
    m = re.search(r"non-finite (.*) at step (\d+)", msg)
    assert m, msg
    assert "loss" in m.group(1).split(", ") and 4 < int(m.group(2)) <= 6, msg
    assert f"last good checkpoint: step 4 in {workdir / 'checkpoints'}" in msg, msg

    _assert_same_checkpoints(snap, _snapshot(workdir))
    steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) < int(m.group(2))  # the bad step was not logged as if it were fine
