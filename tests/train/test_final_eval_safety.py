"""Nothing lost after training, nothing silently wrong in it (issue 21, items 1, 5 and 9).

* The final state is checkpointed before the final evaluation and export: a SIGTERM between
  eval batches exits ``preempted`` at once with the checkpoint on disk, a failure in the
  evaluation leaves it and names ``--eval_only``; the rerun ends equal to an uninterrupted run
  (metrics rows, ``eval_results.json``, export bytes). A SIGTERM in a periodic evaluation is
  redone once on resume.
* ``launch --eval_only`` / ``--export_only`` redo one part from the workdir's saved config; a
  finished workdir run again is a no-op that says so (``metrics.jsonl`` unchanged).
* "Last good checkpoint" means finite parameters: a learning rate that turns non-finite at
  step 3 stops the run at step 3 (not one step later), naming step 2, whose params restore finite.

One uninterrupted in-process run (module fixture) is the reference; the interrupted workdir is
driven in-process too (signals and failures injected into that Trainer), and the launcher is run
only where its flags are what is tested.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import read_jsonl

REPO = Path(__file__).resolve().parents[2]
CONFIG = "experiments/configs/finetune_classification.py"
STEPS = 4
# Overrides of the launcher runs, the same values _config() sets in-process.
LAUNCH_ARGS = (f"--config.num_train_steps={STEPS}", "--config.log_every=1", "--config.eval_batch_size=16",
               "--config.tensorboard=False", "--config.progress=False")
TIMING = {"examples_per_sec", "tokens_per_sec", "elapsed_s"}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_dir):
    """trec with 200 train / 40 test records: 3 eval batches of 16."""
    root = tmp_path_factory.mktemp("data")
    (root / "trec").mkdir()
    for name, n in (("train.jsonl", 200), ("test.jsonl", 40)):
        rows = read_jsonl(data_dir / "trec" / name, n)
        (root / "trec" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(small_data, **overrides):
    from experiments.configs.finetune_classification import get_config
    c = get_config("trec,tiny,runlocal")
    c.data.train, c.data.test = str(small_data / "trec/train.jsonl"), str(small_data / "trec/test.jsonl")
    c.num_train_steps, c.log_every, c.eval_batch_size = STEPS, 1, 16
    c.tensorboard = c.progress = False
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[last] = value
    return c


def _rows(workdir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING}
            for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _launch(workdir: Path, *args: str, small_data: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "JAXBERT_DATA": str(small_data), "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    cmd = [sys.executable, "-m", "experiments.launch", "--workdir", str(workdir), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-4000:]}"
    return json.loads(out[out.index("{"):]), err


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, small_data):
    """One Trainer (compiled once) for the in-process runs of the default config."""
    from jaxbert.train.loop import Trainer
    return Trainer(_config(small_data), tmp_path_factory.mktemp("final") / "unused")


def _in(trainer, workdir: Path):
    """``trainer`` aimed at another run directory: same task and compiled steps, a fresh run there."""
    trainer.workdir = workdir
    workdir.mkdir(parents=True, exist_ok=True)
    return trainer


@pytest.fixture(scope="module")
def reference(tmp_path_factory, trainer):
    """The uninterrupted run: ``(workdir, result)``."""
    workdir = tmp_path_factory.mktemp("final") / "uninterrupted"
    result = _in(trainer, workdir).run()
    assert result["status"] == "done" and result["step"] == STEPS
    return workdir, result


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, trainer, reference):
    """A run SIGTERM'd during its final evaluation, then failing in it, then rerun to the end.

    Returns ``(workdir, notes)``: what each try left, for the tests to check.
    """
    from jaxbert.train.checkpoint import Checkpointer
    workdir = tmp_path_factory.mktemp("final") / "interrupted"
    trainer = _in(trainer, workdir)
    notes = {}

    # 1. SIGTERM while the second eval batch is being produced: the run must stop before it.
    batches = trainer.task.eval_batches
    seen = []

    def sigterm_during_eval(split, batch_size):
        for i, batch in enumerate(batches(split, batch_size)):
            if i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            seen.append(i)
            yield batch

    trainer.task.eval_batches = sigterm_during_eval
    notes["preempted"] = trainer.run()
    notes["batches_seen"] = list(seen)
    notes["rows_after_sigterm"] = _rows(workdir)
    with Checkpointer(workdir) as ckpt:
        notes["steps_after_sigterm"] = ckpt.all_steps()
        notes["metrics_after_sigterm"] = ckpt.metrics(STEPS)
    notes["files_after_sigterm"] = sorted(p.name for p in workdir.iterdir())
    del trainer.task.eval_batches

    # 2. The rerun's evaluation fails: the checkpoint stays, the error says how to redo the eval.
    def broken(*args, **kwargs):
        raise RuntimeError("injected evaluation failure")

    trainer.evaluate = broken
    with pytest.raises(RuntimeError, match="injected evaluation failure") as e:
        trainer.run()
    notes["failure_notes"] = "\n".join(getattr(e.value, "__notes__", []))
    with Checkpointer(workdir) as ckpt:
        notes["steps_after_failure"] = ckpt.all_steps()
    del trainer.evaluate

    # 3. The rerun: no training, the final evaluation and the export.
    notes["rerun"] = trainer.run()
    return workdir, notes


# ------------------------------------------------------------------------------------------
# The final state is saved before the final evaluation; SIGTERM and failures there lose nothing
# ------------------------------------------------------------------------------------------

def test_sigterm_during_final_eval_exits_at_once_with_the_final_checkpoint(interrupted):
    workdir, notes = interrupted
    assert notes["preempted"]["status"] == "preempted" and notes["preempted"]["step"] == STEPS
    assert notes["batches_seen"] == [0, 1]  # batch 1 was produced, never evaluated: stopped between batches
    assert notes["steps_after_sigterm"] == [STEPS]  # checkpoint.every=0: only this save protects the run
    assert notes["metrics_after_sigterm"] is None  # no evaluation finished, none recorded
    rows = notes["rows_after_sigterm"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and {r["split"] for r in rows} == {"train"}
    assert "eval_results.json" not in notes["files_after_sigterm"]
    assert "export" not in notes["files_after_sigterm"]


def test_failure_in_final_eval_keeps_the_checkpoint_and_names_eval_only(interrupted):
    workdir, notes = interrupted
    assert notes["steps_after_failure"] == [STEPS]
    hint = notes["failure_notes"]
    assert f"python -m experiments.launch --workdir {workdir} --eval_only" in hint, hint
    assert str(workdir / "checkpoints" / str(STEPS)) in hint, hint


def test_rerun_after_sigterm_and_failure_equals_the_uninterrupted_run(interrupted, reference):
    from jaxbert.train.checkpoint import Checkpointer
    (workdir, notes), (ref, ref_result) = interrupted, reference
    rerun = notes["rerun"]
    assert rerun["status"] == "done" and rerun["start_step"] == rerun["step"] == STEPS, rerun
    assert _rows(workdir) == _rows(ref)  # train rows once, one set of final eval rows
    assert [r["split"] for r in _rows(ref)].count("test") == 1
    assert (json.loads((workdir / "eval_results.json").read_text())
            == json.loads((ref / "eval_results.json").read_text()))
    assert rerun["eval"] == ref_result["eval"] and 0.0 <= rerun["eval"]["test"]["accuracy"] <= 1.0
    assert _files(workdir / "export") == _files(ref / "export") and _files(ref / "export")
    # The final eval metrics are attached to the final step (best-K ranking), as in the reference.
    with Checkpointer(workdir, keep_best=1, best_metric="test/accuracy") as ckpt, \
            Checkpointer(ref, keep_best=1, best_metric="test/accuracy") as ref_ckpt:
        assert ckpt.metrics(STEPS) == ref_ckpt.metrics(STEPS)
        assert ckpt.metrics(STEPS)["test/accuracy"] == rerun["eval"]["test"]["accuracy"]
        assert ckpt.best_step() == STEPS


def test_sigterm_during_a_periodic_eval_redoes_it_on_resume(trainer, reference, tmp_path, monkeypatch):
    """eval_every=2: SIGTERM in step 2's evaluation; the resume evaluates step 2 once, then trains on."""
    from jaxbert.train.checkpoint import Checkpointer
    ref, _ = reference
    monkeypatch.setattr(trainer.config, "eval_every", 2)  # read by run(), not compiled in
    trainer = _in(trainer, tmp_path / "run")
    batches = trainer.task.eval_batches

    def sigterm_during_eval(split, batch_size):
        for i, batch in enumerate(batches(split, batch_size)):
            if i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(trainer.task, "eval_batches", sigterm_during_eval)
    first = trainer.run()
    assert first["status"] == "preempted" and first["step"] == 2, first
    with Checkpointer(trainer.workdir) as ckpt:
        assert ckpt.all_steps() == [2] and ckpt.metrics(2) is None  # saved before its evaluation
    monkeypatch.delattr(trainer.task, "eval_batches")
    second = trainer.run()
    assert second["status"] == "done" and second["start_step"] == 2 and second["step"] == STEPS

    rows = _rows(trainer.workdir)
    assert [(r["step"], r["split"]) for r in rows] == [(1, "train"), (2, "train"), (2, "test"), (3, "train"),
                                                       (4, "train"), (4, "test")]
    assert [r for r in rows if r["step"] != 2 or r["split"] == "train"] == _rows(ref)  # training unchanged
    with Checkpointer(trainer.workdir, keep_best=1, best_metric="test/accuracy") as ckpt:
        state, _ = ckpt.restore(step=2)
        recorded = ckpt.metrics(2)
    import flax.linen as nn
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):  # as in run()
        want = trainer.evaluate(state["params"], "test")  # step 2's params evaluated again, outside the run
    assert {k: v for k, v in rows[2].items() if k not in ("step", "split")} == want
    assert recorded == {f"test/{k}": float(v) for k, v in want.items()}


# ------------------------------------------------------------------------------------------
# The launcher: a finished workdir is a no-op; --eval_only / --export_only redo one part
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def launched(tmp_path_factory, small_data, interrupted):
    """Two launcher runs at once on the finished workdir: a plain rerun (on it) and --eval_only (on a copy)."""
    workdir, _ = interrupted
    cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
    before = {"metrics": (workdir / "metrics.jsonl").read_bytes(), "export": _files(workdir / "export"),
              "steps": sorted(p.name for p in (workdir / "checkpoints").iterdir())}
    eval_dir = workdir.parent / "eval_only"
    shutil.copytree(workdir, eval_dir)
    procs = {"again": _launch(workdir, "--config", f"{CONFIG}:trec,tiny,runlocal", *LAUNCH_ARGS,
                              small_data=small_data, cache=cache),
             "eval_only": _launch(eval_dir, "--eval_only", small_data=small_data, cache=cache)}
    done = {k: _finish(p) for k, p in procs.items()}
    return {"workdir": workdir, "before": before, "eval_dir": eval_dir, **done}


def test_finished_workdir_run_again_is_a_noop_that_says_so(launched):
    workdir, before = launched["workdir"], launched["before"]
    result, err = launched["again"]
    assert result["status"] == "done" and result.get("already_finished") is True and result["step"] == STEPS
    assert "nothing to do" in err and "--eval_only" in err, err[-2000:]
    assert (workdir / "metrics.jsonl").read_bytes() == before["metrics"]  # no second set of final eval rows
    assert _files(workdir / "export") == before["export"]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before["steps"]


def test_eval_only_replaces_the_final_eval_rows(launched, reference):
    ref, ref_result = reference
    result, _ = launched["eval_only"]
    assert result["status"] == "done" and result["step"] == STEPS and result["eval"] == ref_result["eval"]
    assert "export_dir" not in result  # --eval_only does not export
    assert _rows(launched["eval_dir"]) == _rows(ref)
    assert (json.loads((launched["eval_dir"] / "eval_results.json").read_text())
            == json.loads((ref / "eval_results.json").read_text()))


def test_export_only_from_the_saved_config_writes_the_same_export(interrupted, reference, tmp_path):
    from experiments.config_flag import load_saved_config
    from jaxbert.train.loop import Trainer
    (workdir, _), (ref, _) = interrupted, reference
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    shutil.rmtree(run / "export")
    (run / "exported.json").unlink()
    rows = _rows(run)
    config = load_saved_config(run)
    assert tuple(config.eval_splits) == ("test",) and isinstance(config.mesh, tuple)  # JSON lists back to tuples
    result = Trainer(config, run).run(only="export")
    assert result["status"] == "done" and result["export_dir"] == str(run / "export")
    assert _files(run / "export") == _files(ref / "export")
    assert json.loads((run / "exported.json").read_text())["step"] == STEPS
    assert _rows(run) == rows  # no evaluation ran


def test_eval_only_without_checkpoint_is_an_error(small_data, tmp_path):
    from jaxbert.train.loop import Trainer
    with pytest.raises(FileNotFoundError, match=r"--eval_only: no finalized checkpoint in .*checkpoints"):
        Trainer(_config(small_data), tmp_path / "empty").run(only="eval")


def test_saved_config_flag_errors_name_the_problem(tmp_path):
    from experiments.config_flag import bool_flag, define_saved_config_flag, flag_value
    assert bool_flag(["x", "--eval_only"], "eval_only") and not bool_flag(["x", "--noeval_only"], "eval_only")
    assert bool_flag(["x", "--export_only=true"], "export_only") and not bool_flag(["x"], "export_only")
    assert flag_value(["x", "--workdir", "a"], "workdir") == "a" == flag_value(["--workdir=a"], "workdir")
    with pytest.raises(SystemExit, match=r"config\.json does not exist"):
        define_saved_config_flag(["x", "--workdir", str(tmp_path), "--eval_only"], "--eval_only")
    with pytest.raises(SystemExit, match="drop --config"):
        define_saved_config_flag(["x", "--workdir", str(tmp_path), "--config", "c.py"], "--eval_only")


# ------------------------------------------------------------------------------------------
# A truthful last good checkpoint
# ------------------------------------------------------------------------------------------

def test_lr_turning_infinite_stops_at_that_step_and_names_a_finite_checkpoint(small_data, tmp_path, monkeypatch):
    """The issue's row (learning_rate=1e39, checkpoint.every=1) with the huge LR arriving at step 3.

    Before: the loss of step 3 was computed from the step-2 params (finite), so step 3 was saved
    with NaN/Inf params and the error at step 4 named it as the last good checkpoint.
    """
    from jaxbert.train import optim as optim_lib
    from jaxbert.train.checkpoint import Checkpointer
    from jaxbert.train.loop import Trainer
    make_schedule = optim_lib.make_schedule

    def blowing_up(cfg):
        base = make_schedule(cfg)
        return lambda count: jnp.where(count >= 2, jnp.float32(1e39), base(count))  # 1e39 is inf in float32

    monkeypatch.setattr(optim_lib, "make_schedule", blowing_up)
    workdir = tmp_path / "run"
    with pytest.raises(FloatingPointError) as e:
        Trainer(_config(small_data, **{"checkpoint.every": 1}), workdir).run()
    msg = str(e.value)
    m = re.search(r"non-finite (.*) at step (\d+)", msg)
    assert m and int(m.group(2)) == 3, msg
    assert {"learning_rate", "params"} <= set(m.group(1).split(", ")), msg
    assert f"last good checkpoint: step 2 in {workdir / 'checkpoints'}" in msg, msg

    with Checkpointer(workdir) as ckpt:
        assert ckpt.all_steps() == [1, 2]
        state, _ = ckpt.restore(step=2)
    leaves = jax.tree.leaves(state["params"])
    assert len(leaves) > 20 and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert max(r["step"] for r in _rows(workdir)) == 2  # the bad step was not logged


def _quadratic_state(tx):
    from jaxbert.train.state import TrainState
    params = {"w": jnp.full((4,), 2.0), "b": jnp.zeros((2,))}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(0)))


def _quadratic_loss(params, batch, rng, deterministic):
    loss = jnp.sum((params["w"] * batch["x"]) ** 2) + jnp.sum(params["b"] ** 2)
    return loss, {"loss": loss, "weight": jnp.float32(1.0)}


def test_step_flags_non_finite_params_and_learning_rate():
    from jaxbert.train.step import PARAMS_FINITE, all_finite, finite_or_raise, make_train_step
    assert bool(all_finite({"a": jnp.ones(3), "n": jnp.arange(3)}))
    assert not bool(all_finite({"a": jnp.ones(3), "b": jnp.array([1.0, jnp.nan])}))
    assert not bool(all_finite([jnp.array([jnp.inf], jnp.bfloat16)]))
    batch = {"x": jnp.ones((4,))}

    # A schedule value that turns infinite at the second step: caught at that step.
    schedule = lambda count: jnp.where(count >= 1, jnp.inf, 0.1)
    tx = optax.adam(schedule)
    step = jax.jit(make_train_step(_quadratic_loss, tx, schedule=schedule))
    state, m1 = step(_quadratic_state(tx), batch)
    state, m2 = step(state, batch)
    m1, m2 = ({k: float(v) for k, v in jax.device_get(m).items()} for m in (m1, m2))
    assert m1[PARAMS_FINITE] == 1.0 and m1["learning_rate"] == pytest.approx(0.1)
    assert m2[PARAMS_FINITE] == 0.0 and m2["learning_rate"] == np.inf
    assert np.isfinite(m2["loss"]) and np.isfinite(m2["grad_norm"])  # what the old check looked at
    flag = m2.pop(PARAMS_FINITE) == 1.0
    with pytest.raises(FloatingPointError, match=r"non-finite learning_rate, params at step 2 .*; no ckpt"):
        finite_or_raise(m2, 2, "no ckpt", params_finite=flag)

    # A finite learning rate whose update overflows: only the params are flagged.
    tx = optax.sgd(3e38)
    state, m = jax.jit(make_train_step(_quadratic_loss, tx))(_quadratic_state(tx), batch)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    assert m[PARAMS_FINITE] == 0.0 and np.isfinite(m["loss"]) and "learning_rate" not in m
    with pytest.raises(FloatingPointError, match=r"non-finite params at step 1 \(a leaf of the updated params"):
        finite_or_raise(m, 1, params_finite=m.pop(PARAMS_FINITE) == 1.0)


# ------------------------------------------------------------------------------------------
# The pieces: metrics attached after the save, rows replaced on a redo
# ------------------------------------------------------------------------------------------

def test_record_metrics_ranks_a_step_saved_without_them(tmp_path):
    from jaxbert.train.checkpoint import Checkpointer
    state = lambda v: {"w": jnp.full((3,), v)}
    with Checkpointer(tmp_path, keep_last=1, keep_best=1, best_metric="acc") as ckpt:
        ckpt.save(1, state(1.0), {}, metrics={"acc": 0.5})
        ckpt.save(2, state(2.0), {}, metrics={"acc": 0.3})
        assert ckpt.all_steps() == [1, 2]  # 1 is the best, 2 the latest
        ckpt.save(3, state(3.0), {})  # saved before its evaluation
        assert ckpt.all_steps() == [1, 3] and ckpt.metrics(3) is None
        ckpt.record_metrics(3, {"acc": 0.9})
        assert ckpt.all_steps() == [3] and ckpt.metrics(3) == {"acc": 0.9} and ckpt.best_step() == 3
    with Checkpointer(tmp_path, keep_last=1, keep_best=1, best_metric="acc") as ckpt:  # read back from disk
        ckpt.save(4, state(4.0), {})
        ckpt.record_metrics(4, {"acc": 0.1})
        assert ckpt.all_steps() == [3, 4] and ckpt.best_step() == 3
        ckpt.save(5, state(5.0), {}, metrics={"acc": 0.2})
        assert ckpt.all_steps() == [3, 5]


def test_record_metrics_replaces_extra_and_the_step_still_verifies(tmp_path):
    """What an evaluation tuned (thresholds) reaches the step saved before it, checksums updated."""
    from jaxbert.train.checkpoint import Checkpointer, abstract_like
    state = {"w": jnp.arange(3.0)}
    with Checkpointer(tmp_path, keep_last=2) as ckpt:
        ckpt.save(1, state, {"data": {"pos": 4}, "thresholds": [0.5, 0.5]})
        ckpt.record_metrics(1, {"acc": 0.7}, extra={"data": {"pos": 4}, "thresholds": [0.25, 0.75]})
        assert ckpt.verify(1)
    with Checkpointer(tmp_path, keep_last=2) as ckpt:
        restored, extra = ckpt.restore(abstract_state=abstract_like(state))
    assert extra == {"data": {"pos": 4}, "thresholds": [0.25, 0.75]}
    assert np.array_equal(np.asarray(restored["w"]), np.arange(3.0))


def test_drop_rows_removes_one_steps_eval_rows_only(tmp_path):
    from jaxbert.train.metrics import MetricsWriter
    w = MetricsWriter(tmp_path, tensorboard=False, progress=False)
    for step, split in ((1, "train"), (2, "train"), (2, "test"), (2, "validation")):
        w.write(step, split, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "spl')  # a torn line
    w.drop_rows(2, ["test", "validation"])
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [(1, "train"), (2, "train")]
