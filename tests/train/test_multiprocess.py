"""Multi-process training: 2 processes on localhost (``jax.distributed`` + gloo CPU collectives).

``tests/scripts/multiprocess_worker.py`` runs the real loop (``Trainer.run()``) for 3 steps of the
tiny config with a global batch of 16, once as 2 processes (1 CPU device each) and once as a
single process. The tests check that

* each process reads its own half of every global batch (host ``p`` keeps rows ``p, p+2, ...``)
  and the two halves together are the single process's batch;
* both processes see the same global loss at every step, equal to the single-process loss
  within 1e-5, and end with the same parameters and the same final evaluation;
* the run finishes normally: process 0's ``metrics.jsonl`` and the orbax checkpoint of step 3
  (which every process writes collectively) are in the shared workdir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, read_jsonl

WORKER = REPO_ROOT / "tests" / "scripts" / "multiprocess_worker.py"
TIMEOUT_S = 420
LOSS_ATOL = 1e-5


def _free_port() -> int:
    try:
        import portpicker
        return portpicker.pick_unused_port()
    except ImportError:  # pragma: no cover
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _run_all(cmds: list[list[str]], logdir, env: dict) -> list[dict]:
    """Start every command at once and wait for all, bounded by ``TIMEOUT_S``.

    As soon as one exits with an error (its peer would then wait on a collective forever) or
    time runs out, every process still alive is killed. Returns each one's last stdout line as JSON.
    """
    procs, files = [], []
    try:
        for i, cmd in enumerate(cmds):
            out, err = open(logdir / f"worker{i}.out", "w+"), open(logdir / f"worker{i}.err", "w+")
            files += [out, err]
            procs.append((subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=err), out, err))
        deadline = time.monotonic() + TIMEOUT_S
        while [p.poll() for p, _, _ in procs].count(None):  # poll every one (no short-circuit)
            failed = [(p, err) for p, _, err in procs if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                what = "failed" if failed else f"did not finish in {TIMEOUT_S}s"
                p, err = failed[0] if failed else next((p, e) for p, _, e in procs if p.poll() is None)
                err.flush()
                err.seek(0)
                pytest.fail(f"worker {' '.join(p.args[-6:])} {what}:\n{err.read()[-5000:]}")
            time.sleep(0.5)
        results = []
        for p, out, err in procs:
            out.seek(0)
            err.seek(0)
            if p.returncode != 0:
                pytest.fail(f"worker {' '.join(p.args[-6:])} failed (rc={p.returncode}):\n{err.read()[-5000:]}")
            results.append(json.loads(out.read().strip().splitlines()[-1]))
        return results
    finally:
        for p, _, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()


@pytest.fixture(scope="module")
def runs(data_dir, minilm_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiprocess")
    for name, n in (("train", 256), ("test", 32)):
        rows = read_jsonl(data_dir / "trec" / f"{name}.jsonl", n)
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [sys.executable, str(WORKER), "--train", str(tmp / "train.jsonl"), "--test", str(tmp / "test.jsonl")]
    port = _free_port()
    cmds = [base + ["--workdir", str(tmp / "single")]]
    cmds += [base + ["--workdir", str(tmp / "multi"), "--coordinator", f"127.0.0.1:{port}",
                     "--num_processes", "2", "--process_id", str(i)] for i in range(2)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    single, p0, p1 = _run_all(cmds, tmp, env)
    print(f"\n[test_multiprocess] single losses={single['losses']} p0={p0['losses']} p1={p1['losses']} "
          f"max|dloss|={max(abs(a - b) for p in (p0, p1) for a, b in zip(p['losses'], single['losses'])):.2e}")
    return {"single": single, "procs": [p0, p1], "workdir": tmp / "multi"}


def test_topology(runs):
    single, procs = runs["single"], runs["procs"]
    assert (single["process_count"], single["global_devices"]) == (1, 1)
    for i, p in enumerate(procs):
        assert p["process_index"] == i
        assert (p["process_count"], p["global_devices"], p["local_devices"]) == (2, 2, 1)


def test_each_process_reads_its_half_of_the_global_batch(runs):
    single, (p0, p1) = runs["single"], runs["procs"]
    assert single["local_rows"] == [16, 16, 16]
    assert p0["local_rows"] == p1["local_rows"] == [8, 8, 8]
    for step, full in enumerate(single["local_labels"]):
        assert p0["local_labels"][step] == full[0::2] and p1["local_labels"][step] == full[1::2], step


def test_losses_agree_with_each_other_and_single_process(runs):
    single, (p0, p1) = runs["single"], runs["procs"]
    assert len(p0["losses"]) == len(p1["losses"]) == len(single["losses"]) == 3
    for step in range(3):
        assert abs(p0["losses"][step] - p1["losses"][step]) <= 1e-6, (step, p0["losses"], p1["losses"])
        for p in (p0, p1):
            assert abs(p["losses"][step] - single["losses"][step]) <= LOSS_ATOL, \
                f"process {p['process_index']} step {step + 1}: {p['losses'][step]} vs {single['losses'][step]}"
    # Same parameters after 3 steps (sum of |p| over ~4.4M values) and the same final evaluation.
    assert p0["param_abs_sum"] == p1["param_abs_sum"]
    assert p0["param_abs_sum"] == pytest.approx(single["param_abs_sum"], rel=1e-7)
    for p in (p0, p1):
        assert p["eval"]["test"]["num_examples"] == single["eval"]["test"]["num_examples"] == 32
        assert p["eval"]["test"]["accuracy"] == single["eval"]["test"]["accuracy"]
        assert p["eval"]["test"]["loss"] == pytest.approx(single["eval"]["test"]["loss"], abs=1e-5)


def test_run_finishes_with_metrics_and_checkpoint(runs):
    workdir, (p0, p1) = runs["workdir"], runs["procs"]
    assert p0["status"] == p1["status"] == "done" and p0["step"] == p1["step"] == 3
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert [r["loss"] for r in train] == pytest.approx(p0["losses"], abs=1e-7)
    step_dir = workdir / "checkpoints" / "3"
    assert (step_dir / "_CHECKPOINT_METADATA").is_file(), sorted(p.name for p in step_dir.parent.iterdir())
    extra = json.loads((step_dir / "extra" / "metadata").read_text())
    assert "data" in extra
    assert json.loads((workdir / "eval_results.json").read_text())["step"] == 3
