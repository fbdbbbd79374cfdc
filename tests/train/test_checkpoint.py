"""Tests for jaxbert.train.checkpoint (orbax-backed training checkpoints)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbert.train.checkpoint import (
    STEP_MARKER,
    CheckpointError,
    CheckpointMismatchError,
    Checkpointer,
    abstract_like,
    pack_prng_keys,
    unpack_prng_keys,
)
from jaxbert.train.preemption import PreemptionGuard, any_process, install_sigterm_handler

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_state(seed: int = 0, step: int = 7):
    k = jax.random.key(seed)
    k1, k2, k3 = jax.random.split(k, 3)
    params = {
        "encoder": {"kernel": jax.random.normal(k1, (8, 4), jnp.float32),
                    "bias": jax.random.normal(k2, (4,), jnp.bfloat16)},
        "embed": jax.random.normal(k3, (16, 8), jnp.float32),
    }
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial mu/nu/count
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.asarray(step, jnp.int32),
        "rng": jax.random.key(seed + 100),              # typed key: stored as key data
        "dropout_rng": jax.random.key_data(jax.random.key(seed + 200)),  # raw uint32 data
    }


def assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"tree structure differs:\n{ta}\n{tb}"
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(np.asarray(x).reshape(-1).view(np.uint8),
                              np.asarray(y).reshape(-1).view(np.uint8))


def step_dirs(ckpt: Checkpointer) -> list[int]:
    return sorted(int(p.name) for p in Path(ckpt.directory).iterdir() if p.name.isdigit())


# --------------------------------------------------------------------------------------------


def test_round_trip_bitwise(tmp_path):
    state = make_state()
    extra = {"data": {"epoch": 1, "position": 1234, "shard_order": [3, 1, 2]},
             "config": {"model": "bert-base", "lr": 1e-4, "dropout": None},
             "labels": ["neg", "pos"]}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.restore(abstract_state=abstract_like(state)) is None
        assert ckpt.save(7, state, extra=extra, metrics={"loss": np.float32(0.5)})
        assert ckpt.latest_step() == 7
        assert (tmp_path / "checkpoints" / "7" / STEP_MARKER).exists()
        assert ckpt.metrics(7) == {"loss": 0.5}

    # A fresh Checkpointer (new process after preemption) restores from the abstract tree.
    with Checkpointer(tmp_path) as ckpt:
        restored, extra2 = ckpt.restore(abstract_state=jax.eval_shape(lambda: state))
    assert extra2 == extra
    assert type(restored["opt_state"][0]) is type(state["opt_state"][0])  # namedtuple kept
    assert_trees_equal(restored, state)
    # Restored keys are usable keys.
    assert jax.random.uniform(restored["rng"]).shape == ()

    # Live arrays work as the target too, and so does None (inspection).
    with Checkpointer(tmp_path) as ckpt:
        again, _ = ckpt.restore(7, abstract_state=state)
        assert_trees_equal(again, state)
        raw, _ = ckpt.restore()
    assert raw["params"]["encoder"]["bias"].dtype == jnp.bfloat16
    assert jax.dtypes.issubdtype(raw["rng"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(raw["params"]["embed"], state["params"]["embed"])


def test_relative_workdir(tmp_path, monkeypatch):
    """The README's main job passes a relative ``--workdir runs/...``; orbax wants absolute paths."""
    monkeypatch.chdir(tmp_path)
    state = make_state()
    with Checkpointer("runs/rel") as ckpt:
        assert ckpt.save(3, state, extra={"data": {}})
    assert (tmp_path / "runs" / "rel" / "checkpoints" / "3" / STEP_MARKER).exists()
    with Checkpointer("runs/rel") as ckpt:
        restored, _ = ckpt.restore(abstract_state=jax.eval_shape(lambda: state))
    assert_trees_equal(restored, state)


def test_prng_pack_helpers():
    tree = {"a": jax.random.key(1), "b": jnp.ones(2)}
    packed, impls = pack_prng_keys(tree)
    assert packed["a"].dtype == jnp.uint32 and impls == {"a": "threefry2x32"}
    back = unpack_prng_keys(packed, impls)
    np.testing.assert_array_equal(jax.random.key_data(back["a"]), jax.random.key_data(tree["a"]))


def test_keep_last(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, keep_last=2) as ckpt:
        for s in range(1, 6):
            ckpt.save(s, state, extra={"s": s})
        assert ckpt.all_steps() == [4, 5]
        assert step_dirs(ckpt) == [4, 5]
        _, extra = ckpt.restore(abstract_state=abstract_like(state))
        assert extra == {"s": 5}


@pytest.mark.parametrize("mode,values,best", [
    ("max", [0.9, 0.2, 0.3, 0.4, 0.1], 1),
    ("min", [0.5, 0.05, 0.3, 0.4, 0.6], 2),
])
def test_keep_best(tmp_path, mode, values, best):
    state = make_state()
    with Checkpointer(tmp_path, keep_last=2, keep_best=1, best_metric="acc", best_mode=mode) as ckpt:
        for s, v in enumerate(values, start=1):
            ckpt.save(s, state, metrics={"acc": v, "other": 1.0})
        assert step_dirs(ckpt) == sorted({best, 4, 5})
        assert ckpt.best_step() == best
        # A step saved without the metric is retained by keep_last only.
        ckpt.save(6, state)
        ckpt.save(7, state)
        ckpt.save(8, state)
        assert step_dirs(ckpt) == sorted({best, 7, 8})
    # Retention state survives a restart (metrics are read back from disk).
    with Checkpointer(tmp_path, keep_last=1, keep_best=1, best_metric="acc", best_mode=mode) as ckpt:
        ckpt.save(9, state)
        assert step_dirs(ckpt) == sorted({best, 9})


def test_unfinished_save_is_ignored(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, keep_last=2) as ckpt:
        ckpt.save(1, state, extra={"s": 1})
        ckpt.save(2, state, extra={"s": 2})
    ckdir = tmp_path / "checkpoints"
    # An interrupted orbax save (tmp dir), and a step dir that was never finalized.
    tmp = ckdir / "3.orbax-checkpoint-tmp-1700000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "garbage").write_bytes(b"\x00" * 10)
    (ckdir / "4").mkdir()
    (ckdir / "4" / "partial").write_text("half written")

    with Checkpointer(tmp_path, keep_last=2) as ckpt:
        assert ckpt.latest_step() == 2
        assert ckpt.all_steps() == [1, 2]
        _, extra = ckpt.restore(abstract_state=abstract_like(state))
        assert extra == {"s": 2}
        with pytest.raises(CheckpointError, match=r"not a finalized checkpoint"):
            ckpt.restore(4, abstract_state=abstract_like(state))
        # Saving continues; the junk is neither counted nor deleted.
        ckpt.save(3, state, extra={"s": 3})
        assert ckpt.all_steps() == [2, 3]
        assert (ckdir / "4" / "partial").exists() and tmp.exists()
        # Saving over an unfinalized step dir moves it aside (never deletes it).
        ckpt.save(4, state, extra={"s": 4})
        assert ckpt.all_steps() == [3, 4]
        aside = [p for p in ckdir.iterdir() if p.name.startswith("4.incomplete-")]
        assert len(aside) == 1 and (aside[0] / "partial").exists()
        assert ckpt.restore(abstract_state=abstract_like(state))[1] == {"s": 4}


# orbax's reader may leave an asyncio callback behind after the read error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_checkpoint_raises_with_path(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        ckpt.save(2, state)
    ckdir = tmp_path / "checkpoints"

    # Step 2: array data destroyed (files truncated / removed).
    for p in (ckdir / "2" / "state").rglob("*"):
        if p.is_file() and p.name != "_METADATA":
            p.write_bytes(b"garbage")
    with Checkpointer(tmp_path, fallback=False) as ckpt:  # fallback: tests/train/test_checkpoint_integrity.py
        with pytest.raises(CheckpointError) as ei:
            ckpt.restore(abstract_state=abstract_like(state))
        msg = str(ei.value)
        assert str(ckdir / "2") in msg and "step 2" in msg
        # The older good checkpoint is still restorable.
        restored, _ = ckpt.restore(1, abstract_state=abstract_like(state))
        assert_trees_equal(restored, state)

    # Step 3: has the marker but nothing else.
    (ckdir / "3").mkdir()
    (ckdir / "3" / STEP_MARKER).write_text("{not json")
    with Checkpointer(tmp_path, fallback=False) as ckpt:
        with pytest.raises(CheckpointError) as ei:
            ckpt.restore(abstract_state=abstract_like(state))
        msg = str(ei.value)
        assert str(ckdir / "3") in msg and "missing" in msg

    # A step that is not there at all.
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 99.*does not exist.*Finalized steps"):
            ckpt.restore(99, abstract_state=abstract_like(state))


def test_mismatch_names_keys_and_shapes(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        abstract = abstract_like(state)

        bad = jax.tree.map(lambda x: x, abstract)
        bad["params"]["encoder"]["kernel"] = jax.ShapeDtypeStruct((8, 5), jnp.float32)
        with pytest.raises(CheckpointMismatchError) as ei:
            ckpt.restore(abstract_state=bad)
        msg = str(ei.value)
        assert "params/encoder/kernel" in msg and "(8, 4)" in msg and "(8, 5)" in msg
        assert "opt_state" not in msg  # only the mismatched key is reported

        bad = jax.tree.map(lambda x: x, abstract)
        bad["params"]["pooler"] = jax.ShapeDtypeStruct((8,), jnp.float32)
        del bad["dropout_rng"]
        with pytest.raises(CheckpointMismatchError) as ei:
            ckpt.restore(abstract_state=bad)
        msg = str(ei.value)
        assert "missing in checkpoint (1): params/pooler" in msg
        assert "unexpected in checkpoint (1" in msg and "dropout_rng" in msg

        bad = jax.tree.map(lambda x: x, abstract)
        bad["params"]["embed"] = jax.ShapeDtypeStruct((16, 8), jnp.bfloat16)
        with pytest.raises(CheckpointMismatchError, match=r"params/embed: checkpoint dtype float32"):
            ckpt.restore(abstract_state=bad)
        cast, _ = ckpt.restore(abstract_state=bad, allow_dtype_cast=True)
        assert cast["params"]["embed"].dtype == jnp.bfloat16

        # Partial restore: only params from a full training checkpoint.
        params, _ = ckpt.restore(abstract_state={"params": abstract["params"]}, partial=True)
        assert_trees_equal(params["params"], state["params"])


def test_restore_with_sharding_one_device(tmp_path):
    state = make_state()
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state)
        specs = jax.tree.map(lambda x: P(), jax.eval_shape(lambda: state))
        specs["params"]["encoder"]["kernel"] = P("data", "model")
        shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                                 is_leaf=lambda x: isinstance(x, P))
        target = abstract_like(jax.eval_shape(lambda: state), shardings)
        restored, _ = ckpt.restore(abstract_state=target)
    for leaf, sh in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        assert leaf.sharding == sh
    assert_trees_equal(restored, state)


SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxbert.train.checkpoint import Checkpointer, abstract_like
    assert jax.device_count() == 8, jax.devices()
    workdir = sys.argv[1]
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    w = jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32)
    keys = jax.random.split(jax.random.key(0), 8)
    state = {
        "w": jax.device_put(w, NamedSharding(mesh, P("data", "model"))),
        "b": jax.device_put(jnp.arange(32.0), NamedSharding(mesh, P("model"))),
        "keys": jax.device_put(keys, NamedSharding(mesh, P("data"))),
        "step": jnp.asarray(5, jnp.int32),
    }
    with Checkpointer(workdir) as ckpt:
        ckpt.save(5, state, extra={"mesh": [4, 2]})
        # Restore onto a different layout: 8-way on the other axis order.
        mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
        target = {
            "w": jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh2, P("model", "data"))),
            "b": jax.ShapeDtypeStruct((32,), jnp.float32, sharding=NamedSharding(mesh2, P())),
            "keys": jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=NamedSharding(mesh2, P("model"))),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh2, P())),
        }
        out, extra = ckpt.restore(abstract_state=target)
    assert extra == {"mesh": [4, 2]}
    for k in target:
        assert out[k].sharding == target[k].sharding, (k, out[k].sharding)
    assert len(out["w"].addressable_shards) == 8
    assert out["w"].addressable_shards[0].data.shape == (16, 16)
    np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(out["keys"])),
                                  np.asarray(jax.random.key_data(keys)))
    print("SHARDED_OK")
""")


def test_sharded_save_restore_8_devices(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and "SHARDED_OK" in res.stdout, res.stderr[-4000:]

    # The 8-device checkpoint restores in this (1-device) process.
    with Checkpointer(tmp_path / "run") as ckpt:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=dev),
                  "b": jax.ShapeDtypeStruct((32,), jnp.float32, sharding=dev),
                  "keys": jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 8)),
                  "step": jax.ShapeDtypeStruct((), jnp.int32)}
        out, _ = ckpt.restore(abstract_state=target)
    np.testing.assert_array_equal(np.asarray(out["w"]), np.arange(64 * 32).reshape(64, 32))
    assert out["w"].sharding == dev and int(out["step"]) == 5


def test_async_save(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, keep_last=2, async_save=True) as ckpt:
        for s in (10, 20, 30):
            assert ckpt.save(s, state, extra={"s": s})
        ckpt.wait()
        assert ckpt.all_steps() == [20, 30]
        restored, extra = ckpt.restore(abstract_state=abstract_like(state))
    assert extra == {"s": 30}
    assert_trees_equal(restored, state)


def test_save_guards(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, save_interval_steps=10) as ckpt:
        assert not ckpt.save(5, state)
        assert ckpt.save(5, state, force=True)          # e.g. preemption save
        assert ckpt.save(10, state)
        assert not ckpt.save(10, state)                 # already the latest: no-op
        with pytest.raises(CheckpointError, match=r"newer finalized checkpoint \(step 10\)"):
            ckpt.save(8, state, force=True)
        with pytest.raises(TypeError, match=r"extra\['data'\]\['pos'\] is int64"):
            ckpt.save(20, state, extra={"data": {"pos": np.int64(3)}})
        assert ckpt.all_steps() == [5, 10]
    with pytest.raises(ValueError, match="keep_best needs best_metric"):
        Checkpointer(tmp_path, keep_best=1)
    with pytest.raises(CheckpointError, match="closed"):
        ckpt.save(30, state)


def test_sigterm_guard_sets_flag_and_keeps_running():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.preempted and not guard()
        os.kill(os.getpid(), signal.SIGTERM)
        # The handler runs at the next bytecode boundary in the main thread.
        for _ in range(100):
            if guard.preempted:
                break
        assert guard.preempted and guard() and guard.received == [signal.SIGTERM]
        assert any_process(guard.preempted) is True
    assert signal.getsignal(signal.SIGTERM) == before  # previous handler restored

    is_preempted = install_sigterm_handler()
    try:
        assert is_preempted() is False
        assert any_process(False) is False
    finally:
        is_preempted.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_retention_policy_latest_n_plus_best_k_on_random_histories():
    """The policy (orbax LatestN + BestN on the finalized / scored steps) keeps exactly: every
    unfinalized directory, the n newest finalized steps, and the k best scored ones (ties: newer)."""
    import collections
    import random

    from jaxbert.train.checkpoint import _LastNPlusBestK

    Info = collections.namedtuple("Info", "step metrics")
    rnd = random.Random(0)
    for trial in range(300):
        steps = sorted(rnd.sample(range(1, 60), rnd.randint(1, 12)))
        unfinalized = {s for s in steps if rnd.random() < 0.2}
        infos = []
        for s in steps:
            r = rnd.random()
            metrics = (None if r < 0.15 else {"other": 1.0} if r < 0.25 else {"acc": float("nan")} if r < 0.3
                       else {"acc": float(rnd.randint(0, 4))})  # few values: ties
            infos.append(Info(s, metrics))
        n, k, mode = rnd.choice([None, 1, 2, 3]), rnd.choice([None, 0, 1, 2]), rnd.choice(["max", "min"])
        policy = _LastNPlusBestK(is_valid=lambda s: s not in unfinalized, n=n, k=k, metric="acc", mode=mode)
        got = policy.should_preserve(infos)

        valid = [i for i, c in enumerate(infos) if c.step not in unfinalized]
        want = {i for i in range(len(infos)) if i not in valid}
        want |= set(valid if n is None else valid[max(0, len(valid) - n):])
        scored = [(c.metrics["acc"], i) for i, c in enumerate(infos) if i in valid and c.metrics
                  and "acc" in c.metrics and c.metrics["acc"] == c.metrics["acc"]]
        scored.sort(key=lambda t: (t[0] if mode == "max" else -t[0], t[1]), reverse=True)
        want |= {i for _, i in scored[:k or 0]}
        assert got == [i in want for i in range(len(infos))], (trial, steps, unfinalized, infos, n, k, mode)
