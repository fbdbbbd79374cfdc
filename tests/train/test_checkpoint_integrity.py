"""Checkpoint integrity (checksums.json) and fallback from a damaged latest step.

Small pytrees through :class:`Checkpointer` directly: two steps are saved once per module, each
test damages a copy of step 2 the way a disk, a copy or a person would, and checks that the
restore either falls back to step 1 (equal arrays, step 2 moved aside, one log line naming the
step, the file and the reason) or, with ``fallback=False``, raises one line naming step and file.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert.train import integrity
from jaxbert.train.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    Checkpointer,
    abstract_like,
)

LOGGER = "jaxbert.train.checkpoint"


def make_state(seed: int):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"params": {"embed": jax.random.normal(k1, (256, 64), jnp.float32),  # 64 KB: most of the data
                       "bias": jax.random.normal(k2, (8,), jnp.bfloat16)},
            "step": jnp.asarray(seed, jnp.int32)}


STATES = {1: make_state(1), 2: make_state(2)}


def assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A workdir with finalized steps 1 and 2 (different states), each with its checksums."""
    workdir = tmp_path_factory.mktemp("integrity") / "run"
    with Checkpointer(workdir, keep_last=None, keep_best=1, best_metric="acc") as ckpt:
        for s, state in STATES.items():
            ckpt.save(s, state, extra={"s": s}, metrics={"acc": 0.1 * s})
    return workdir


@pytest.fixture
def workdir(saved, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(saved, dst)
    return dst


def largest_array_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
               key=lambda p: p.stat().st_size)


def flip_bytes(step_dir: Path) -> str:
    p = largest_array_file(step_dir)
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])  # same size, other bytes
    p.write_bytes(bytes(data))
    return str(p.relative_to(step_dir))


def truncate(step_dir: Path) -> str:
    p = largest_array_file(step_dir)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return str(p.relative_to(step_dir))


def drop_ocdbt_manifest(step_dir: Path) -> str:
    (step_dir / "state" / "manifest.ocdbt").unlink()
    return "state/manifest.ocdbt"


def garbage_extra(step_dir: Path) -> str:
    (step_dir / "extra" / "metadata").write_bytes(b"\x00garbage{")
    return "extra/metadata"


def drop_state(step_dir: Path) -> str:
    shutil.rmtree(step_dir / "state")
    return "state/"


def garbage_checksums(step_dir: Path) -> str:
    (step_dir / integrity.MANIFEST_NAME).write_text('{"files": 3')
    return integrity.MANIFEST_NAME


# (damage, with checksums.json?, reason expected). Without checksums (a step saved before they
# existed) orbax's own read errors are the signal; flipped bytes are not in that list (next test).
CASES = [
    pytest.param(drop_ocdbt_manifest, True, "missing-file", id="missing-manifest.ocdbt"),
    pytest.param(truncate, True, "size", id="truncated-array"),
    pytest.param(flip_bytes, True, "checksum", id="flipped-bytes"),
    pytest.param(garbage_extra, True, "size", id="garbage-extra-json"),
    pytest.param(drop_state, True, "missing-file", id="missing-state"),
    pytest.param(garbage_checksums, True, "bad-manifest", id="garbage-checksums.json"),
    pytest.param(truncate, False, "bad-array-data", id="unverified-truncated-array"),
    pytest.param(drop_ocdbt_manifest, False, "bad-array-metadata", id="unverified-missing-manifest.ocdbt"),
    pytest.param(garbage_extra, False, "bad-metadata", id="unverified-garbage-extra-json"),
    pytest.param(drop_state, False, "missing-state", id="unverified-missing-state"),
]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reader after errors
@pytest.mark.parametrize("damage,checksummed,reason", CASES)
def test_damaged_latest_step_raises_one_line_or_falls_back(workdir, caplog, damage, checksummed, reason):
    ckdir = workdir / "checkpoints"
    if not checksummed:
        (ckdir / "2" / integrity.MANIFEST_NAME).unlink()
    bad_file = damage(ckdir / "2")
    target = abstract_like(STATES[1])

    # fallback=False: one line naming the step and the file; nothing moved.
    with Checkpointer(workdir, fallback=False) as ckpt:
        with pytest.raises(CheckpointCorruptError) as ei:
            ckpt.restore(abstract_state=target)
    msg, e = str(ei.value), ei.value
    assert "\n" not in msg and len(msg) < 800, msg
    assert (e.step, e.reason) == (2, reason), msg
    # The damaged file itself when checksummed; else what orbax names (e.g. the OCDBT database state/).
    damaged = str(ckdir / "2" / bad_file).rstrip("/")
    assert e.file.rstrip("/") == damaged if checksummed else damaged.startswith(e.file.rstrip("/")), (e.file, msg)
    assert "step 2" in msg and e.file in msg, msg
    assert "checkpoint.fallback=False" in msg and "resume from step 1" in msg, msg
    assert sorted(p.name for p in ckdir.iterdir()) == ["1", "2"]

    # Default: step 2 moved aside (kept, named for the reason), one log line, step 1 restored.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER), Checkpointer(workdir) as ckpt:
        restored, extra = ckpt.restore(abstract_state=target)
        assert ckpt.all_steps() == [1]
    assert extra == {"s": 1}
    assert_same(restored, STATES[1])
    aside = ckdir / f"2.corrupt-{reason}"
    assert aside.is_dir() and not (ckdir / "2").exists()
    assert sorted(p.name for p in ckdir.iterdir()) == ["1", aside.name]
    lines = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage() or "could not" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "step 2" in lines[0] and e.file in lines[0] and str(aside) in lines[0], lines[0]
    assert "falling back to step 1" in lines[0], lines[0]


def test_flipped_bytes_restore_silently_without_checksums_and_are_caught_with_them(workdir):
    """The issue's finding: orbax restores flipped bytes of an array file as other values, silently."""
    ckdir = workdir / "checkpoints"
    flip_bytes(ckdir / "2")
    target = abstract_like(STATES[2])
    with Checkpointer(workdir, fallback=False) as ckpt:
        with pytest.raises(CheckpointCorruptError, match=r"step 2 is corrupt: .*: checksum: sha256"):
            ckpt.restore(abstract_state=target)
    (ckdir / "2" / integrity.MANIFEST_NAME).unlink()  # as a step saved before checksums existed
    with Checkpointer(workdir, fallback=False) as ckpt:
        restored, _ = ckpt.restore(abstract_state=target)
    changed = int(np.sum(np.asarray(restored["params"]["embed"]) != np.asarray(STATES[2]["params"]["embed"])))
    assert changed > 0  # no error, wrong values: what checksums.json is for


def test_manifest_lists_every_file_and_explicit_step_never_falls_back(workdir):
    step_dir = workdir / "checkpoints" / "2"
    manifest = json.loads((step_dir / integrity.MANIFEST_NAME).read_text())
    assert manifest["algorithm"] == "sha256" and manifest["step"] == 2
    assert sorted(manifest["files"]) == integrity.list_files(step_dir)
    assert {"extra/metadata", "meta/metadata", "state/manifest.ocdbt"} <= set(manifest["files"])
    for rel, (size, digest) in manifest["files"].items():
        assert integrity.file_digest(step_dir / rel) == (size, digest)
    assert not list(step_dir.glob(f".{integrity.MANIFEST_NAME}*"))  # the temporary file was renamed

    flip_bytes(step_dir)
    with Checkpointer(workdir) as ckpt:  # fallback on, but step 2 was asked for by name
        assert ckpt.verify(1) is True
        with pytest.raises(CheckpointCorruptError, match=r"step 2 is corrupt"):
            ckpt.restore(2, abstract_state=abstract_like(STATES[2]))
    assert step_dir.is_dir()


def test_no_restorable_step_says_what_was_tried(workdir):
    ckdir = workdir / "checkpoints"
    flip_bytes(ckdir / "2")
    truncate(ckdir / "1")
    with Checkpointer(workdir) as ckpt:
        with pytest.raises(CheckpointError) as ei:
            ckpt.restore(abstract_state=abstract_like(STATES[1]))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"no restorable checkpoint in {ckdir}: tried step 2 ("), msg
    assert "checksum; moved to 2.corrupt-checksum" in msg and "size; moved to 1.corrupt-size" in msg, msg
    assert sorted(p.name for p in ckdir.iterdir()) == ["1.corrupt-size", "2.corrupt-checksum"]
    with Checkpointer(workdir) as ckpt:  # a second attempt finds no step: a fresh run may start
        assert ckpt.restore(abstract_state=abstract_like(STATES[1])) is None


def test_retention_stays_correct_after_a_step_is_moved_aside(workdir):
    """Step 2 was the best (acc 0.2) and is corrupt: after the fallback step 1 is the best, the
    moved-aside directory is neither counted nor deleted, and a re-saved step 2 is a new step."""
    ckdir = workdir / "checkpoints"
    truncate(ckdir / "2")
    state = STATES[1]
    with Checkpointer(workdir, keep_last=1, keep_best=1, best_metric="acc") as ckpt:
        restored, _ = ckpt.restore(abstract_state=abstract_like(state))
        assert ckpt.best_step() == 1
        for s, acc in ((2, 0.05), (3, 0.01), (4, 0.02)):
            ckpt.save(s, restored, extra={"s": s}, metrics={"acc": acc})
        assert ckpt.all_steps() == [1, 4] and ckpt.best_step() == 1
        assert ckpt.verify(4) is True
    assert sorted(p.name for p in ckdir.iterdir()) == ["1", "2.corrupt-size", "4"]
    assert (ckdir / "2.corrupt-size" / "state").is_dir()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_backend_spec_only_with_debug_flag(workdir, monkeypatch):
    ckdir = workdir / "checkpoints"
    (ckdir / "2" / integrity.MANIFEST_NAME).unlink()
    truncate(ckdir / "2")
    target = abstract_like(STATES[2])
    monkeypatch.delenv("JAXBERT_DEBUG", raising=False)
    with Checkpointer(workdir, fallback=False) as ckpt:
        with pytest.raises(CheckpointCorruptError) as ei:
            ckpt.restore(abstract_state=target)
    short = str(ei.value)
    assert "\n" not in short and "'driver'" not in short and "JAXBERT_DEBUG=1" in short, short
    assert "OUT_OF_RANGE" in short and ei.value.__cause__ is None, short  # the backend's reason, one line
    monkeypatch.setenv("JAXBERT_DEBUG", "1")
    with Checkpointer(workdir, fallback=False) as ckpt:
        with pytest.raises(CheckpointCorruptError) as ei:
            ckpt.restore(abstract_state=target)
    assert "'driver'" in str(ei.value) and len(str(ei.value)) > len(short) + 500


def test_a_verified_step_that_orbax_cannot_read_is_not_moved(workdir, monkeypatch):
    """Files matching their checksums mean the failure is not on disk (memory, backend): raise, keep."""
    with Checkpointer(workdir) as ckpt:
        def fail(*args, **kwargs):
            raise MemoryError("RESOURCE_EXHAUSTED: out of memory while restoring")
        monkeypatch.setattr(ckpt._mngr, "restore", fail)
        with pytest.raises(CheckpointError, match=r"step 2: .*matches its checksum: MemoryError") as ei:
            ckpt.restore(abstract_state=abstract_like(STATES[2]))
        assert not isinstance(ei.value, CheckpointCorruptError)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]


def test_async_save_is_checksummed_once_finalized(tmp_path):
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(5, STATES[1], extra={"s": 5})
        ckpt.wait()
        assert (ckpt.step_dir(5) / integrity.MANIFEST_NAME).is_file()
        ckpt.save(6, STATES[2], extra={"s": 6})
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.verify(5) is True and ckpt.verify(6) is True
        restored, extra = ckpt.restore(abstract_state=abstract_like(STATES[2]))
    assert extra == {"s": 6}
    assert_same(restored, STATES[2])


TWO_PROCESS_SCRIPT = """
import json, os, sys
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]), initialization_timeout=120)
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxbert.train.checkpoint import Checkpointer
sys.path.insert(0, sys.argv[4])
from test_checkpoint_integrity import flip_bytes

mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, P("data"))
def state(step):
    w = np.arange(256 * 64, dtype=np.float32).reshape(256, 64) * step
    return {"w": jax.make_array_from_callback(w.shape, rows, lambda i: w[i]),
            "step": jax.device_put(np.int32(step), NamedSharding(mesh, P()))}
workdir = Path(sys.argv[3])
with Checkpointer(workdir) as ckpt:
    ckpt.save(1, state(1))
    ckpt.save(2, state(2))
if jax.process_index() == 0:
    flip_bytes(workdir / "checkpoints" / "2")
multihost_utils.sync_global_devices("flipped")
target = jax.eval_shape(lambda: state(1))
with Checkpointer(workdir) as ckpt:
    out, _ = ckpt.restore(abstract_state=target)
    steps = ckpt.all_steps()
want = np.arange(256 * 64, dtype=np.float32).reshape(256, 64)
local_ok = all(np.array_equal(np.asarray(s.data), want[s.index]) for s in out["w"].addressable_shards)
print(json.dumps({"step": int(np.asarray(out["step"].addressable_shards[0].data)), "local_ok": local_ok,
                  "steps": steps, "dirs": sorted(p.name for p in (workdir / "checkpoints").iterdir())}))
"""


def test_two_processes_agree_on_the_damaged_step_and_fall_back_together(tmp_path):
    """Process 0 writes the checksums; on restore each process checks its share of the files and all
    agree: the step whose bytes were flipped is moved aside once and both restore step 1."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "two_process.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    repo, here = Path(__file__).resolve().parents[2], Path(__file__).resolve().parent
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{port}", str(i), str(tmp_path / "run"),
                               str(here)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    for r in results:
        assert r == {"step": 1, "local_ok": True, "steps": [1], "dirs": ["1", "2.corrupt-checksum"]}, r
