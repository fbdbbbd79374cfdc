"""Exact resume after a real SIGTERM, and freezing / layer-wise LR decay through the Trainer.

Resume: ``python -m experiments.launch`` runs ``TOTAL`` steps uninterrupted; another workdir
gets a real SIGTERM (sent by the loop to itself at step ``N`` via ``debug_sigterm_at_step``),
saves at that step boundary, exits with status ``preempted`` and is resumed by re-running the
same command; a third one is killed from outside (``send_signal``) once its metrics show a few
steps, then resumed. With dropout on, the train metrics of every step and the final
params / optimizer state / RNG / data-iterator position must equal the uninterrupted run's
bit for bit (CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from _configs import trec_run_config, write_small_trec

REPO = Path(__file__).resolve().parents[2]
CONFIG = "experiments/configs/finetune_classification.py"
N = 20  # deterministic SIGTERM at this step
TOTAL = 2 * N
TRAIN_METRICS = ("loss", "accuracy", "grad_norm", "learning_rate")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_dir):
    """A ``$JAXBERT_DATA`` with small trec files (same label set), so eval stays cheap."""
    return write_small_trec(tmp_path_factory.mktemp("data"), data_dir, 300, 40)


def _cmd(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.launch", "--config", f"{CONFIG}:trec,tiny,runlocal",
            "--workdir", str(workdir), f"--config.num_train_steps={TOTAL}", "--config.log_every=1",
            "--config.checkpoint.every=0", "--config.eval_every=0", "--config.export_hf=False",
            "--config.progress=False", *extra]


def _env(tmp_path_factory, small_data) -> dict:
    env = dict(os.environ)
    env.update(JAXBERT_DATA=str(small_data), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "jax_compilation_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _start(cmd, env) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    """Wait for ``proc``; it must exit 0; returns the summary JSON it printed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"launcher timed out after {timeout}s: {err[-3000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-4000:]}"
    return json.loads(out[out.index("{"):])


def _train_rows(workdir: Path) -> list[dict]:
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def _last_train_step(workdir: Path) -> int:
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line being written
    return max(steps)


def _final_checkpoint(workdir: Path):
    from jaxbert.train.checkpoint import Checkpointer
    with Checkpointer(workdir) as ckpt:
        steps = ckpt.all_steps()
        state, extra = ckpt.restore()
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    return steps, flat, extra


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_data):
    """Workdirs of: the uninterrupted run, the self-SIGTERM'd + resumed one, the externally killed + resumed one."""
    base = tmp_path_factory.mktemp("resume")
    env = _env(tmp_path_factory, small_data)
    ref, det, ext = base / "uninterrupted", base / "sigterm_at_n", base / "external_kill"
    det_cmd = _cmd(det, f"--config.debug_sigterm_at_step={N}")
    ext_cmd = _cmd(ext)

    procs = {"ref": _start(_cmd(ref), env), "det": _start(det_cmd, env), "ext": _start(ext_cmd, env)}
    # External kill: a real SIGTERM from outside once the run is a few steps in.
    deadline = time.monotonic() + 240
    while _last_train_step(ext) < 2 and procs["ext"].poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    procs["ext"].send_signal(signal.SIGTERM)
    first = {k: _finish(p) for k, p in procs.items()}
    assert first["ref"]["status"] == "done" and first["ref"]["step"] == TOTAL
    assert first["det"]["status"] == "preempted" and first["det"]["step"] == N, first["det"]
    assert first["ext"]["status"] == "preempted", f"the external SIGTERM came too late: {first['ext']}"
    killed_at = first["ext"]["step"]
    assert 2 <= killed_at < TOTAL
    assert [r["step"] for r in _train_rows(det)] == list(range(1, N + 1))
    assert [r["step"] for r in _train_rows(ext)] == list(range(1, killed_at + 1))

    # Resume: the very same commands again.
    resumed = {"det": _finish(_start(det_cmd, env)), "ext": _finish(_start(ext_cmd, env))}
    assert resumed["det"]["start_step"] == N and resumed["ext"]["start_step"] == killed_at
    for r in resumed.values():
        assert r["status"] == "done" and r["step"] == TOTAL, r
    return {"ref": ref, "det": det, "ext": ext, "killed_at": killed_at}


@pytest.mark.parametrize("which", ["det", "ext"])
def test_resume_gives_the_same_losses(runs, which):
    ref_rows, rows = _train_rows(runs["ref"]), _train_rows(runs[which])
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(1, TOTAL + 1))
    for a, b in zip(ref_rows, rows):
        assert {k: a[k] for k in TRAIN_METRICS} == {k: b[k] for k in TRAIN_METRICS}, f"step {a['step']}"
    # Dropout is on and the data is shuffled: the losses are not all alike.
    assert len({r["loss"] for r in ref_rows}) > TOTAL // 2
    ref_eval = json.loads((runs["ref"] / "eval_results.json").read_text())
    assert json.loads((runs[which] / "eval_results.json").read_text()) == ref_eval


@pytest.mark.parametrize("which", ["det", "ext"])
def test_resume_gives_bitwise_equal_state(runs, which):
    ref_steps, ref_state, ref_extra = _final_checkpoint(runs["ref"])
    steps, state, extra = _final_checkpoint(runs[which])
    assert ref_steps == [TOTAL]
    assert steps == [N if which == "det" else runs["killed_at"], TOTAL]
    assert state.keys() == ref_state.keys()
    assert any("params" in k for k in state) and any("opt_state" in k for k in state)
    differ = [k for k in ref_state if not np.array_equal(ref_state[k], state[k])]
    assert not differ, f"{len(differ)} of {len(state)} leaves differ, e.g. {differ[:5]}"
    assert extra["data"] == ref_extra["data"]  # the data iterator ends at the same position


def test_dropout_is_on():
    from experiments.configs.finetune_classification import get_config
    from jaxbert.models import registry
    c = get_config("trec,tiny,runlocal")
    assert c.model.overrides.hidden_dropout_prob is None  # keep the preset's
    cfg, _ = registry.get(c.model.preset)
    assert cfg.hidden_dropout_prob == 0.1


# ------------------------------------------------------------------------------------------
# Freezing and layer-wise LR decay through the Trainer
# ------------------------------------------------------------------------------------------

def test_frozen_leaves_and_layerwise_decay_in_training(tmp_path, small_data):
    import flax.linen as nn
    from jaxbert.train.loop import Trainer
    from jaxbert.train.optim import lr_multipliers, path_str

    c = trec_run_config(small_data, **{"num_train_steps": 3, "optim.freeze_embeddings": True,
                                       "optim.freeze_lower_layers": 1, "optim.layerwise_lr_decay": 0.8})

    trainer = Trainer(c, tmp_path)
    flat = lambda tree: {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):  # as in run()
        initial = flat(jax.device_get(trainer._new_state().params))
    assert trainer.run()["status"] == "done"
    final = flat(jax.device_get(trainer.final_state.params))
    assert final.keys() == initial.keys()

    is_frozen = lambda p: "embeddings/" in p or "layer_0/" in p
    frozen = [p for p in initial if is_frozen(p)]
    trainable = [p for p in initial if not is_frozen(p)]
    assert frozen and trainable and any("layer_1/" in p for p in trainable)
    for p in frozen:
        assert np.array_equal(initial[p], final[p]), f"frozen {p} changed"
    for p in trainable:
        assert not np.array_equal(initial[p], final[p]), f"trainable {p} did not change"

    # Optimizer state: Adam's mu and nu for the trainable leaves only.
    info = trainer.optim_info
    size = lambda paths: sum(initial[p].size for p in paths)
    assert (info["num_frozen"], info["num_trainable"]) == (size(frozen), size(trainable))
    opt_leaves = jax.tree_util.tree_flatten_with_path(trainer.final_state.opt_state)[0]
    moments = [(path_str(p), x) for p, x in opt_leaves if x.ndim > 0]
    assert sum(x.size for _, x in moments) == 2 * size(trainable)
    assert not [p for p, _ in moments if "embeddings" in p or "layer_0" in p]

    # Layer-wise LR decay, read back: L=2 layers, d=0.8 -> layer_1 0.8; frozen 0; heads 1.
    mults = lr_multipliers(info)
    assert mults.keys() == initial.keys()
    for p, m in mults.items():
        want = 0.0 if is_frozen(p) else (0.8 if "layer_1/" in p else 1.0)
        assert m == pytest.approx(want), p
