"""The workdir lock (jaxbert/train/workdir_lock.py): one run per workdir, stale locks taken over safely.

Unit tests on the lock object (a second holder is a second open file description, so a second
``WorkdirLock`` in this process is refused just like a second launcher), and one launcher-level
test: ``python -m experiments.launch`` on a workdir whose lock this test process holds stops
before it writes ``metrics.jsonl``, ``config.json`` or ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_jsonl
from jaxbert.train import workdir_lock as wl
from jaxbert.train.workdir_lock import LOCK_NAME, LockInfo, WorkdirInUseError, WorkdirLock

REPO = Path(__file__).resolve().parents[2]
IN_USE = r"workdir .+ is in use by pid {pid} on host {host} since .+ \(lock file .+jaxbert\.lock\)"


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not wl.pid_alive(proc.pid)
    return proc.pid


def _write_lock(workdir: Path, **fields) -> Path:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00+00:00",
            "boot_id": wl.boot_id(), "proc_start": wl.process_start_ticks(os.getpid()), "token": "x"}
    info.update(fields)
    path = workdir / LOCK_NAME
    path.write_text(json.dumps(info))
    return path


@pytest.fixture(scope="module")
def small_trec(tmp_path_factory, data_dir):
    """A ``$JAXBERT_DATA`` with a small trec train / test split."""
    root = tmp_path_factory.mktemp("data")
    (root / "trec").mkdir()
    for name, n in (("train.jsonl", 64), ("test.jsonl", 16)):
        rows = read_jsonl(data_dir / "trec" / name, n)
        (root / "trec" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def notes():
    said = []
    return said, said.append


@pytest.fixture
def network_fs(monkeypatch):
    """Pretend the workdir is on a filesystem where flock proves nothing (NFS-like)."""
    monkeypatch.setattr(wl, "flock_is_authoritative", lambda path: False)


def test_acquire_writes_info_and_release_removes_it(tmp_path):
    lock = WorkdirLock(tmp_path / "run")
    with lock:
        info = LockInfo.parse((tmp_path / "run" / LOCK_NAME).read_text())
        assert (info.pid, info.host) == (os.getpid(), socket.gethostname())
        assert info.proc_start == wl.process_start_ticks(os.getpid()) is not None
        assert lock.held
    assert not lock.held
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no temp file left either
    with WorkdirLock(tmp_path / "run"):  # free again
        pass


def test_second_acquirer_is_refused_with_pid_host_and_file(tmp_path):
    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirInUseError,
                           match=IN_USE.format(pid=os.getpid(), host=socket.gethostname())) as e:
            WorkdirLock(tmp_path).acquire()
        assert "holds the lock" in str(e.value) and f"kill {os.getpid()}" in str(e.value)
        assert (tmp_path / LOCK_NAME).exists()  # the refused one did not remove it
    assert not (tmp_path / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = WorkdirLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).unlink()  # removed by hand, and taken by someone else
    other = WorkdirLock(tmp_path).acquire()
    lock.release()
    assert (tmp_path / LOCK_NAME).exists() and other.held
    other.release()


@pytest.mark.parametrize("fs", ["local", "network"])
def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, notes, monkeypatch, fs):
    if fs == "network":
        monkeypatch.setattr(wl, "flock_is_authoritative", lambda path: False)
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid, proc_start=12345)
    said, say = notes
    with WorkdirLock(tmp_path, say=say):
        assert LockInfo.parse((tmp_path / LOCK_NAME).read_text()).pid == os.getpid()
    assert len(said) == 1 and f"stale lock {tmp_path / LOCK_NAME} of pid {pid}" in said[0]
    reason = "no process holds it" if fs == "local" else f"pid {pid} is no longer running"
    assert reason in said[0]


def test_reused_pid_is_stale(tmp_path, notes, network_fs):
    # Our own pid, alive, but the lock says it started at another time: someone else's pid, reused.
    _write_lock(tmp_path, proc_start=wl.process_start_ticks(os.getpid()) + 1)
    said, say = notes
    with WorkdirLock(tmp_path, say=say):
        pass
    assert "now belongs to another process" in said[0]


def test_live_pid_on_this_host_is_refused_without_flock_proof(tmp_path, network_fs):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, pid=sleeper.pid, proc_start=wl.process_start_ticks(sleeper.pid))
        with pytest.raises(WorkdirInUseError, match=IN_USE.format(pid=sleeper.pid, host=socket.gethostname())) as e:
            WorkdirLock(tmp_path).acquire()
        assert f"kill {sleeper.pid}" in str(e.value)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("fs", ["local", "network"])
def test_lock_of_another_host_is_refused(tmp_path, monkeypatch, fs):
    if fs == "network":
        monkeypatch.setattr(wl, "flock_is_authoritative", lambda path: False)
    path = _write_lock(tmp_path, pid=_dead_pid(), host="gpu-node-17")
    with pytest.raises(WorkdirInUseError, match=IN_USE.format(pid=r"\d+", host="gpu-node-17")) as e:
        WorkdirLock(tmp_path).acquire()
    assert "another host" in str(e.value) and f"rm {path}" in str(e.value)
    assert path.exists()


def test_other_boot_on_a_network_filesystem_is_refused(tmp_path, network_fs):
    _write_lock(tmp_path, pid=_dead_pid(), boot_id="00000000-0000-0000-0000-000000000000")
    if wl.boot_id() is None:
        pytest.skip("no /proc boot id on this system")
    with pytest.raises(WorkdirInUseError, match="restarted since, or another machine has the same name"):
        WorkdirLock(tmp_path).acquire()


def test_unreadable_lock_file_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(WorkdirInUseError, match=r"is in use \(lock file .+: not a jaxbert lock file"):
        WorkdirLock(tmp_path).acquire()


def test_filesystem_type_of_the_test_dir():
    fs = wl.filesystem_type(REPO)
    if not Path("/proc/self/mountinfo").exists():
        pytest.skip("no /proc")
    assert isinstance(fs, str) and fs


def test_second_launcher_is_refused_before_it_writes(tmp_path, small_trec):
    """A launcher on a workdir in use (held here) exits non-zero, naming us, with nothing written."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    env = dict(os.environ, JAXBERT_DATA=str(small_trec), JAX_PLATFORMS="cpu")
    with WorkdirLock(workdir):
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.launch", "--config",
             "experiments/configs/finetune_classification.py:trec,tiny,runlocal", "--workdir", str(workdir),
             "--config.num_train_steps=2", "--config.export_hf=False", "--config.progress=False",
             "--config.tensorboard=False"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        after = sorted(p.name for p in workdir.iterdir())
    assert proc.returncode != 0
    assert "WorkdirInUseError" in proc.stderr
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in proc.stderr
    assert after == [LOCK_NAME, "metrics.jsonl"]  # no checkpoints/, config.json, config history
    rows = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]  # one history, untouched
