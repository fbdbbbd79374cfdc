r"""Fault injection from outside: kill, corrupt, crowd, fill and feed bad input to ``experiments.launch``.

Every scenario drives ``python -m experiments.launch`` as a subprocess (signals, files, a
tmpfs), never the library in-process, so the harness keeps working while the loop, the
checkpointer and the loaders change underneath it. A scenario gives one row::

    {"name": ..., "outcome": what happened (one line), "ok": the desired behaviour holds,
     "detail": {...numbers and messages...}}

Desired behaviour (issue #21): a killed run, re-run with the same command, ends with the
metrics rows (one history, no duplicated step rows), ``eval_results.json`` and the export's
bytes of an uninterrupted run; a corrupt latest checkpoint falls back to the previous step with
a one-line message; a second launcher on a busy workdir is refused; a full disk keeps the last
checkpoint and says so; a bad config value or data record is refused before step 1 with its key
(file, line) named; shape-compatible model-directory mistakes are refused; a NaN run names a
last-good checkpoint whose parameters are finite.

Run (``~12 min`` on 2 busy cores; the tiny 2-layer BERT, 12 steps, a persistent compilation cache)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/faults.py --label before
    PYTHONPATH=$PWD .venv/bin/python benchmarks/faults.py --only corrupt,two_launchers --keep

``--only`` takes scenario names or prefixes (``corrupt`` = every ``corrupt_*``), ``--kills N``
the number of seeded random kills, ``--seed`` their seed. The table goes to stdout, the JSON to
``--out`` (default ``benchmarks/results/faults_<label>.json``), run logs to ``<base>/logs``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
CONFIG = "experiments/configs/finetune_classification.py"
TOTAL = 12  # training steps of every run
EVERY = 4  # checkpoint.every of the "periodic" command: saves at 4, 8 (and the final 12)
TRAIN_KEYS = ("loss", "accuracy", "grad_norm", "learning_rate")  # deterministic train-row values
TIMING_KEYS = ("examples_per_sec", "tokens_per_sec", "elapsed_s")
POLL_S = 0.005
TERM_GRACE_S = 10.0  # SIGTERM, then SIGKILL this much later if still alive
RUN_TIMEOUT_S = 300.0


# ------------------------------------------------------------------------------------------
# Reading a workdir from outside
# ------------------------------------------------------------------------------------------

def metrics_rows(workdir: Path) -> list[dict]:
    """The parseable rows of ``workdir/metrics.jsonl`` (a torn last line is skipped)."""
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def train_steps(workdir: Path) -> list[int]:
    return [r.get("step") for r in metrics_rows(workdir) if r.get("split") == "train"]


def checkpoint_entries(workdir: Path) -> list[str]:
    try:
        return sorted(os.listdir(workdir / "checkpoints"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def finalized_steps(workdir: Path) -> list[int]:
    """Step directories that orbax finalized (``_CHECKPOINT_METADATA`` present), ascending."""
    out = []
    for name in checkpoint_entries(workdir):
        if name.isdigit() and (workdir / "checkpoints" / name / "_CHECKPOINT_METADATA").exists():
            out.append(int(name))
    return sorted(out)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_digest(workdir: Path) -> dict[str, str] | None:
    """``{file name: sha256}`` of ``workdir/export`` (None when there is no export)."""
    d = workdir / "export"
    if not d.is_dir():
        return None
    return {p.name: sha256(p) for p in sorted(d.iterdir()) if p.is_file()}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------
# Triggers: predicates on a live workdir, polled every POLL_S
# ------------------------------------------------------------------------------------------

def saving(step: int | None = None) -> Callable[[Path], bool]:
    """An unfinished checkpoint save is on disk (orbax's ``<step>.orbax-checkpoint-tmp-*``, or a
    step directory not yet finalized); ``step`` limits it to that step."""
    def pred(workdir: Path) -> bool:
        for name in checkpoint_entries(workdir):
            head = name.split(".", 1)[0]
            if step is not None and head != str(step):
                continue
            if ".orbax-checkpoint-tmp" in name or ".tmp" in name:
                return True
            if name.isdigit() and not (workdir / "checkpoints" / name / "_CHECKPOINT_METADATA").exists():
                return True
        return False
    return pred


def in_final_eval(workdir: Path) -> bool:
    """The last train row (step TOTAL) is logged, no evaluation row of that step yet, and the
    final evaluation has begun: a launcher that checkpoints the final state first has finalized
    step TOTAL (before that moment the kill would land in the save, not the evaluation); one that
    saves only after the evaluation has no step TOTAL, so a second after the train row counts."""
    rows = metrics_rows(workdir)
    if not (any(r.get("split") == "train" and r.get("step") == TOTAL for r in rows)
            and not any(r.get("split") != "train" and r.get("step") == TOTAL for r in rows)):
        return False
    step_dir = workdir / "checkpoints" / str(TOTAL)
    if (step_dir / "_CHECKPOINT_METADATA").exists():
        return True
    if saving(TOTAL)(workdir) or step_dir.exists():
        return False
    try:
        return time.time() - (workdir / "metrics.jsonl").stat().st_mtime > 1.0
    except FileNotFoundError:
        return False


def in_export(workdir: Path) -> bool:
    """An export is being written: a ``.export.tmp-*`` / ``.export.old`` sibling, or ``export/`` appeared."""
    try:
        names = os.listdir(workdir)
    except FileNotFoundError:
        return False
    return any(n.startswith(".export") for n in names) or "export" in names


def after_step(k: int) -> Callable[[Path], bool]:
    return lambda workdir: bool(train_steps(workdir)) and max(train_steps(workdir)) >= k


# ------------------------------------------------------------------------------------------
# Running the launcher
# ------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One launcher process, finished."""
    name: str
    rc: int | None
    wall_s: float
    stdout: str
    stderr: str
    injected: str | None = None  # the signal sent, when one was
    injected_at_s: float | None = None
    term_to_exit_s: float | None = None  # SIGTERM -> exit (None: not sent, or SIGKILLed after the grace)
    needed_sigkill: bool = False
    at_injection: dict = field(default_factory=dict)  # what the workdir showed at the injection
    summary_to_exit_s: float | None = None  # summary printed -> process gone (interpreter teardown)

    @property
    def summary(self) -> dict | None:
        """The JSON summary the launcher prints last on stdout (None when it printed none)."""
        lines = self.stdout.splitlines()
        for i in range(len(lines) - 1, -1, -1):
            if lines[i] == "{":
                try:
                    return json.loads("\n".join(lines[i:]))
                except json.JSONDecodeError:
                    return None
        return None

    @property
    def status(self) -> str | None:
        s = self.summary
        return s.get("status") if s else None

    @property
    def error_line(self) -> str:
        """The first line of the error the run ended with ('' when none): the last
        ``SomeError: ...`` / ``error: ...`` line of stderr, cut to 300 characters."""
        lines = [l for l in self.stderr.splitlines() if l.strip()]
        pat = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)|error|FATAL|Fatal)\b.*:")
        for line in reversed(lines):
            if pat.match(line.strip()):
                return line.strip()[:300]
        return lines[-1].strip()[:300] if lines and self.rc not in (0, None) else ""

    @property
    def full_error_line(self) -> str:
        """:attr:`error_line` uncut."""
        target = self.error_line
        for line in reversed(self.stderr.splitlines()):
            if target and line.strip().startswith(target[:200]):
                return line.strip()
        return ""

    @property
    def error_chars(self) -> int:
        """Length of the full error line (tensorstore specs make it KBs long)."""
        return len(self.full_error_line)

    def brief(self) -> dict:
        return {"rc": self.rc, "status": self.status, "wall_s": round(self.wall_s, 1),
                "summary_to_exit_s": None if self.summary_to_exit_s is None else round(self.summary_to_exit_s, 1),
                "error": self.error_line or None, "stderr_bytes": len(self.stderr.encode()),
                **({"injected": self.injected, "injected_at_s": round(self.injected_at_s or 0, 2),
                    "term_to_exit_s": None if self.term_to_exit_s is None else round(self.term_to_exit_s, 2),
                    "needed_sigkill": self.needed_sigkill, "at_injection": self.at_injection}
                   if self.injected else {})}


class Harness:
    """Builds the small data, the commands, runs and compares; one base directory per harness run."""

    def __init__(self, base: Path, seed: int = 0, cache_dir: Path | None = None,
                 data_src: Path | None = None, python: str = sys.executable, say: Callable[[str], None] = print):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "logs").mkdir(exist_ok=True)
        self.rng = random.Random(seed)
        self.python = python
        self.say = say
        src = Path(data_src or os.environ.get("JAXBERT_DATA", REPO.parent / "shared" / "data"))
        self.data = self._small_data(src)
        cache = Path(cache_dir or self.base / "jax_cache")
        self.env = dict(os.environ)
        self.env.update(JAXBERT_DATA=str(self.data), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
                        JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        self._ref: Path | None = None
        self.lock = threading.Lock()  # the reference and the corruption base are built once, by one thread
        self._counter = itertools.count(1)
        self.live: set[subprocess.Popen] = set()

    # ---- data and commands -----------------------------------------------------------------

    def _small_data(self, src: Path) -> Path:
        """``<base>/data/trec/{train,test}.jsonl``: the first 200 records of each real trec file."""
        root = self.base / "data"
        (root / "trec").mkdir(parents=True, exist_ok=True)
        for name in ("train.jsonl", "test.jsonl"):
            dst = root / "trec" / name
            if not dst.exists():
                with open(src / "trec" / name, encoding="utf-8") as f:
                    lines = [l for l in f if l.strip()][:200]
                dst.write_text("".join(lines), encoding="utf-8")
        return root

    def cmd(self, workdir: Path, *extra: str, every: int = 0, variant: str = "trec,tiny,runlocal") -> list[str]:
        """The launcher command: ``TOTAL`` steps logged every step, export on, ``checkpoint.every=every``."""
        return [self.python, "-m", "experiments.launch", "--config", f"{CONFIG}:{variant}",
                "--workdir", str(workdir), f"--config.num_train_steps={TOTAL}", "--config.log_every=1",
                f"--config.checkpoint.every={every}", "--config.eval_batch_size=16",
                "--config.progress=False", "--config.tensorboard=False", *extra]

    def start(self, cmd: list[str], name: str) -> tuple[subprocess.Popen, Path, Path, float]:
        out = self.base / "logs" / f"{next(self._counter):03d}_{name}.out"
        err = out.with_suffix(".err")
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=open(out, "w"), stderr=open(err, "w"),
                                start_new_session=True)
        self.live.add(proc)
        return proc, out, err, time.monotonic()

    def kill_all(self) -> None:
        """SIGKILL every launcher this harness started that is still running (harness interrupted)."""
        for proc in list(self.live):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def finish(self, handle, name: str, timeout: float = RUN_TIMEOUT_S, **inj) -> Run:
        proc, out, err, t0 = handle
        t_summary = None  # when the summary JSON was complete on stdout (unbuffered): exit is slow after it
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                proc.kill()
                inj.setdefault("at_injection", {})["timeout"] = timeout
                break
            if t_summary is None and out.stat().st_size and out.read_text(errors="replace").rstrip().endswith("}"):
                t_summary = time.monotonic()
            time.sleep(0.05)
        proc.wait()
        end = time.monotonic()
        return Run(name, proc.returncode, end - t0, out.read_text(errors="replace"),
                   err.read_text(errors="replace"), summary_to_exit_s=None if t_summary is None else end - t_summary,
                   **inj)

    def run(self, cmd: list[str], name: str, timeout: float = RUN_TIMEOUT_S) -> Run:
        return self.finish(self.start(cmd, name), name, timeout)

    def run_and_inject(self, cmd: list[str], name: str, workdir: Path, trigger: Callable[[Path], bool],
                       sig: int, delay_s: float = 0.0, timeout: float = RUN_TIMEOUT_S) -> Run:
        """Start ``cmd``; once ``trigger(workdir)`` holds (polled every 5 ms), wait ``delay_s`` and send
        ``sig`` (SIGTERM: SIGKILL too if still alive 10 s later). The run may end before the trigger."""
        handle = self.start(cmd, name)
        proc, t0 = handle[0], handle[3]
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if trigger(workdir):
                break
            time.sleep(POLL_S)
        if proc.poll() is not None:
            return self.finish(handle, name, timeout)
        if delay_s:
            time.sleep(delay_s)
        if proc.poll() is not None:
            return self.finish(handle, name, timeout)
        seen = {"last_train_step": max(train_steps(workdir), default=0),
                "checkpoint_entries": checkpoint_entries(workdir),
                "workdir_entries": sorted(os.listdir(workdir)) if workdir.is_dir() else []}
        t_inj = time.monotonic()
        proc.send_signal(sig)
        term_to_exit = term_to_summary = None
        needed_kill = False
        if sig == signal.SIGTERM:  # wait out the grace, noting when the summary is printed and the exit
            out_path = handle[1]
            while proc.poll() is None and time.monotonic() - t_inj < TERM_GRACE_S:
                if term_to_summary is None and out_path.read_text(errors="replace").rstrip().endswith("}"):
                    term_to_summary = time.monotonic() - t_inj
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                needed_kill = True
            else:
                term_to_exit = time.monotonic() - t_inj
        proc.wait()
        seen["term_to_summary_s"] = None if term_to_summary is None else round(term_to_summary, 2)
        return self.finish(handle, name, timeout, injected=signal.Signals(sig).name, injected_at_s=t_inj - t0,
                           term_to_exit_s=term_to_exit, needed_sigkill=needed_kill, at_injection=seen)

    def run_until_done(self, cmd: list[str], name: str, tries: int = 3) -> list[Run]:
        """Re-run ``cmd`` until it reports ``status: done`` with exit 0 (at most ``tries`` times)."""
        runs = []
        for i in range(tries):
            r = self.run(cmd, f"{name}_resume{i + 1}")
            runs.append(r)
            if r.rc == 0 and r.status == "done":
                break
            if r.rc not in (0, None) and r.status is None and "preempt" not in r.stderr.lower():
                break  # an error, not a preemption: re-running the same command will not help
        return runs

    # ---- the uninterrupted reference -------------------------------------------------------

    def reference(self) -> Path:
        """The workdir of one uninterrupted run of the plain command (run once, then reused)."""
        with self.lock:
            return self._reference()

    def _reference(self) -> Path:
        if self._ref is None:
            wd = self.base / "reference"
            if not (wd / "eval_results.json").exists():
                shutil.rmtree(wd, ignore_errors=True)
                r = self.run(self.cmd(wd), "reference")
                if r.rc != 0 or r.status != "done":
                    raise RuntimeError(f"the reference run failed (rc {r.rc}): {r.error_line}\n{r.stderr[-3000:]}")
            self._ref = wd
        return self._ref

    def compare(self, workdir: Path) -> list[str]:
        """How ``workdir`` differs from the reference: metrics rows (one history, no duplicated
        (step, split) rows, deterministic values), eval_results.json, export bytes. [] = identical."""
        ref = self.reference()
        diffs = []
        rows, ref_rows = metrics_rows(workdir), metrics_rows(ref)
        keys = [(r.get("step"), r.get("split")) for r in rows]
        dup = sorted({k for k in keys if keys.count(k) > 1}, key=str)
        if dup:
            diffs.append(f"duplicated metrics rows (step, split): {dup[:6]}")
        if len(rows) != len(ref_rows):
            diffs.append(f"{len(rows)} metrics rows, reference {len(ref_rows)}")
        want = {(r["step"], r["split"]): r for r in ref_rows}
        got = {(r.get("step"), r.get("split")): r for r in rows}
        missing = [k for k in want if k not in got]
        if missing:
            diffs.append(f"missing metrics rows: {missing[:6]}")
        differ = []
        for k, a in want.items():
            b = got.get(k)
            if b is None:
                continue
            names = TRAIN_KEYS if k[1] == "train" else [n for n in a if n not in TIMING_KEYS]
            if any(a.get(n) != b.get(n) for n in names):
                differ.append(k)
        if differ:
            diffs.append(f"metrics values differ at (step, split) {differ[:6]}")
        try:
            if json.loads((workdir / "eval_results.json").read_text()) != json.loads((ref / "eval_results.json").read_text()):
                diffs.append("eval_results.json differs")
        except (FileNotFoundError, json.JSONDecodeError) as e:
            diffs.append(f"eval_results.json: {type(e).__name__}")
        got_exp, want_exp = export_digest(workdir), export_digest(ref)
        if got_exp is None:
            diffs.append("no export/")
        elif got_exp != want_exp:
            bad = sorted(n for n in set(got_exp) | set(want_exp) if got_exp.get(n) != want_exp.get(n))
            diffs.append(f"export files differ: {bad}")
        return diffs


# ------------------------------------------------------------------------------------------
# Scenarios: each returns one row {name, outcome, ok, detail}
# ------------------------------------------------------------------------------------------

def row(name: str, outcome: str, ok: bool, **detail) -> dict:
    return {"name": name, "outcome": outcome, "ok": bool(ok), "detail": detail}


def kill_and_resume(h: Harness, name: str, sig: int, trigger: Callable[[Path], bool], every: int,
                    delay_s: float = 0.0, needs_final_checkpoint: bool = False,
                    keep_copy: Path | None = None) -> dict:
    """Inject ``sig`` when ``trigger`` fires, re-run the same command until done, compare with the
    reference. ``needs_final_checkpoint``: the kill came after all training steps, so a checkpoint of
    the final step must be on disk right after it (the trained state is not lost)."""
    wd = h.base / name
    shutil.rmtree(wd, ignore_errors=True)
    cmd = h.cmd(wd, every=every)
    first = h.run_and_inject(cmd, name, wd, trigger, sig, delay_s)
    after = {"finalized_steps": finalized_steps(wd), "train_rows": len(train_steps(wd)),
             "export": (wd / "export").is_dir()}
    if keep_copy is not None:
        shutil.rmtree(keep_copy, ignore_errors=True)
        shutil.copytree(wd, keep_copy, symlinks=True)
    if first.injected is None:
        diffs = h.compare(wd) if first.rc == 0 else []
        return row(name, f"trigger never fired: the run ended first (rc {first.rc}, {first.status})", False,
                   first=first.brief(), after_kill=after, diffs=diffs)
    done_first = first.status == "done"  # finished (its exit may still have been cut short by SIGKILL)
    resumes = [] if done_first else h.run_until_done(cmd, name)
    last = resumes[-1] if resumes else first
    finished = last.status == "done" and (last.rc == 0 or last is first)  # first: SIGKILLed in its teardown
    diffs = h.compare(wd) if finished else ["the last re-run failed"]
    problems = list(diffs)
    if needs_final_checkpoint and TOTAL not in after["finalized_steps"] and not done_first:
        problems.append(f"after the kill no checkpoint of step {TOTAL} (finalized: {after['finalized_steps']}): "
                        "all training lost")
    if sig == signal.SIGTERM and first.needed_sigkill and first.at_injection.get("term_to_summary_s") is None:
        problems.append(f"SIGTERM not honoured within {TERM_GRACE_S:.0f} s (no summary; SIGKILLed)")
    if not finished:
        problems.append(f"not done after {len(resumes)} re-runs: rc {last.rc} {last.error_line}")
    where = (f"{first.injected} at train step {first.at_injection.get('last_train_step')}"
             f" ({first.injected_at_s:.1f} s; ckpt entries {first.at_injection.get('checkpoint_entries')})")
    term = ""
    if sig == signal.SIGTERM:
        t_sum, t_exit = first.at_injection.get("term_to_summary_s"), first.term_to_exit_s
        term = (f"summary {t_sum} s after SIGTERM, " if t_sum is not None else "no summary, ") + (
            f"exit after {t_exit:.1f} s; " if t_exit is not None else f"still alive {TERM_GRACE_S:.0f} s after SIGTERM (SIGKILLed); ")
    how = term + ("finished by itself" if done_first else
           f"{first.status or 'died'} rc {first.rc}; finalized after kill {after['finalized_steps']}; "
           f"{len(resumes)} re-run(s), resumed at {[r.summary.get('start_step') if r.summary else None for r in resumes]}")
    outcome = f"{where}: {how}; " + ("equal to the reference" if not problems else "; ".join(problems))
    return row(name, outcome, not problems, first=first.brief(), after_kill=after,
               resumes=[r.brief() for r in resumes], diffs=diffs)


def random_kill_plans(rng: random.Random, n: int) -> list[dict]:
    """``n`` seeded kill points: alternating SIGKILL / SIGTERM, after a random train step (0 = during
    start-up: imports, compilation, restore) plus a random delay."""
    plans = []
    for i in range(n):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
        k = rng.randint(0, TOTAL)
        delay = rng.uniform(3.0, 15.0) if k == 0 else rng.uniform(0.0, 0.3)
        plans.append({"name": f"random_kill_{i + 1}_{signal.Signals(sig).name.lower()}", "sig": sig,
                      "after_step": k, "delay_s": round(delay, 3)})
    return plans


def scenario_random_kill(h: Harness, plan: dict) -> dict:
    trigger = (lambda wd: True) if plan["after_step"] == 0 else after_step(plan["after_step"])
    r = kill_and_resume(h, plan["name"], plan["sig"], trigger, every=EVERY, delay_s=plan["delay_s"])
    r["detail"]["planned"] = (f"{'start-up' if plan['after_step'] == 0 else 'after step %d' % plan['after_step']}"
                              f" + {plan['delay_s']:.2f} s")
    return r


def corrupt_base(h: Harness) -> Path:
    """A workdir holding finalized steps 4 and 8 of the periodic command, killed inside the save
    of step 12 (made by ``sigkill_in_save`` or here)."""
    base = h.base / "corrupt_base"
    with _CORRUPT_BASE_LOCK:
        if finalized_steps(base) != [4, 8]:
            shutil.rmtree(base, ignore_errors=True)
            wd = h.base / "corrupt_base_build"
            shutil.rmtree(wd, ignore_errors=True)
            h.run_and_inject(h.cmd(wd, every=EVERY), "corrupt_base_build", wd, saving(TOTAL), signal.SIGKILL)
            shutil.copytree(wd, base, symlinks=True)
            if finalized_steps(base) != [4, 8]:
                raise RuntimeError(f"could not build a workdir with checkpoints 4 and 8: {finalized_steps(base)}")
    return base


_CORRUPT_BASE_LOCK = threading.Lock()


def largest_array_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix()]
    return max(files, key=lambda p: p.stat().st_size)


def _corrupt(kind: str, step_dir: Path) -> str:
    """Damage ``step_dir`` (a finalized step) in one way; returns what was done."""
    if kind == "manifest":
        p = step_dir / "state" / "manifest.ocdbt"
        p.unlink()
        return f"removed {p.relative_to(step_dir.parent.parent)}"
    if kind == "truncate":
        p = largest_array_file(step_dir)
        size = p.stat().st_size
        os.truncate(p, size // 2)
        return f"truncated {p.relative_to(step_dir.parent.parent)} {size} -> {size // 2} bytes"
    if kind == "flip":
        p = largest_array_file(step_dir)
        data = bytearray(p.read_bytes())
        off = len(data) // 3
        for i in range(off, off + 256):
            data[i] ^= 0xFF
        p.write_bytes(bytes(data))
        return f"inverted 256 bytes at offset {off} of {p.relative_to(step_dir.parent.parent)} ({len(data)} bytes)"
    if kind == "extra":
        p = step_dir / "extra" / "metadata"
        p.write_text('{"data": garbage')
        return f"garbage JSON in {p.relative_to(step_dir.parent.parent)}"
    if kind == "no_state":
        shutil.rmtree(step_dir / "state")
        return f"removed {(step_dir / 'state').relative_to(step_dir.parent.parent)}/"
    raise ValueError(kind)


CORRUPTIONS = ("manifest", "truncate", "flip", "extra", "no_state")


def scenario_corrupt(h: Harness, kind: str) -> dict:
    """Corrupt the latest (step 8) of two checkpoints; the same command must fall back to step 4,
    say so in one line naming step 8, and end equal to the reference."""
    name = f"corrupt_{kind}"
    base = corrupt_base(h)
    wd = h.base / name
    shutil.rmtree(wd, ignore_errors=True)
    shutil.copytree(base, wd, symlinks=True)
    did = _corrupt(kind, wd / "checkpoints" / "8")
    cmd = h.cmd(wd, every=EVERY)
    runs = h.run_until_done(cmd, name, tries=2)
    last = runs[-1]
    start = [r.summary.get("start_step") if r.summary else None for r in runs]
    mentions = [l.strip()[:300] for l in last.stderr.splitlines()
                if re.search(r"(step 8\b|checkpoints/8\b)", l) and len(l) < 2000]
    diffs = h.compare(wd) if last.rc == 0 else []
    if last.rc != 0:
        outcome = f"run stops (rc {last.rc}), no fallback: {last.error_line[:160]} [{last.error_chars} chars]"
        ok = False
    elif start and start[0] == 8:
        outcome = ("restored the corrupt step 8 silently; " +
                   ("final metrics/export equal the reference (damage not visible)" if not diffs
                    else f"silently wrong: {'; '.join(diffs)}"))
        ok = False
    else:
        ok = start[0] == 4 and not diffs and bool(mentions)
        outcome = (f"resumed at step {start[0]}; " + ("equal to the reference" if not diffs else "; ".join(diffs))
                   + (f"; message: {mentions[0][:160]}" if mentions else "; no line names step 8"))
    return row(name, outcome, ok, corruption=did, runs=[r.brief() for r in runs], start_steps=start,
               error_chars=last.error_chars, lines_naming_step_8=mentions[:3], diffs=diffs,
               checkpoint_entries_after=checkpoint_entries(wd))


def scenario_two_launchers(h: Harness) -> dict:
    """Launcher A starts; once it has logged step 2 it is paused (SIGSTOP) and launcher B starts on the
    same workdir; after B ends A is continued. Desired: B refused naming A, A ends equal to the reference."""
    name = "two_launchers"
    wd = h.base / name
    shutil.rmtree(wd, ignore_errors=True)
    cmd = h.cmd(wd, every=EVERY)
    a = h.start(cmd, "two_launchers_A")
    t0 = time.monotonic()
    while a[0].poll() is None and not after_step(2)(wd) and time.monotonic() - t0 < RUN_TIMEOUT_S:
        time.sleep(POLL_S)
    if a[0].poll() is not None:
        ra = h.finish(a, "A")
        return row(name, f"A ended before step 2 (rc {ra.rc})", False, A=ra.brief())
    os.kill(a[0].pid, signal.SIGSTOP)
    rows_before_b = len(metrics_rows(wd))
    try:
        rb = h.run(cmd, "two_launchers_B", timeout=RUN_TIMEOUT_S)
        rows_b = len(metrics_rows(wd))
    finally:
        os.kill(a[0].pid, signal.SIGCONT)
    ra = h.finish(a, "A")
    rows = metrics_rows(wd)
    diffs = h.compare(wd)
    mentions_pid = str(a[0].pid) in rb.stderr
    refused = rb.rc not in (0, None) and rb.status is None and rows_b == rows_before_b
    ok = refused and mentions_pid and ra.rc == 0 and ra.status == "done" and not diffs
    outcome = (f"B: rc {rb.rc} {rb.status or ''} {rb.error_line[:120]!r}; A: rc {ra.rc} {ra.status or ''} "
               f"{ra.error_line[:120]!r}; metrics.jsonl {len(rows)} rows ({sum(r.get('split') == 'train' for r in rows)} "
               f"train) for {TOTAL} steps; " + ("equal to the reference" if not diffs else "; ".join(diffs)))
    return row(name, outcome, ok, A=ra.brief(), B=rb.brief(), b_names_a_pid=mentions_pid,
               rows_before_b=rows_before_b, rows_after_b=rows_b, diffs=diffs, finalized_steps=finalized_steps(wd))


def _mount_tmpfs(path: Path, size_bytes: int) -> str | None:
    """Mount a tmpfs of ``size_bytes`` at ``path``; None on success, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount failed: {r.stderr.strip()[:200]}"


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def scenario_disk_full(h: Harness, during: str) -> dict:
    """The workdir on a small tmpfs: room for one checkpoint but not two (``save``), or for the final
    checkpoint but not the export (``export``). Desired: the run stops with a one-line message about the
    disk, the last checkpoint is intact (for ``export``: the final step), no half-written export; for
    ``export`` the workdir copied to a roomy disk and re-run with the same command ends equal to the
    reference (evaluated and exported once)."""
    name = f"disk_full_{during}"
    ref = h.reference()
    ckpt = dir_bytes(ref / "checkpoints" / str(TOTAL))
    exp = dir_bytes(ref / "export")
    mnt = h.base / f"{name}_mnt"
    size = int(ckpt * 1.5) if during == "save" else int(ckpt * 1.1 + exp * 0.5)
    why = _mount_tmpfs(mnt, size)
    if why:
        return row(name, f"skipped: {why}", False, skipped=True)
    try:
        wd = mnt / "run"
        every = EVERY if during == "save" else 0
        r = h.run(h.cmd(wd, every=every), name)
        after = {"finalized_steps": finalized_steps(wd), "checkpoint_entries": checkpoint_entries(wd),
                 "workdir_entries": sorted(os.listdir(wd)) if wd.is_dir() else [],
                 "export_files": sorted(os.listdir(wd / "export")) if (wd / "export").is_dir() else None}
        copy = h.base / name
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(wd, copy, symlinks=True)
    finally:
        _umount(mnt)
    space_msg = bool(re.search(r"(no space|ENOSPC|disk full|errno 28)", r.full_error_line, re.I))
    resumes, diffs = [], []
    if during == "export":  # the trained state is there: a re-run must only evaluate/export, once
        resumes = h.run_until_done(h.cmd(copy, every=every), name, tries=2)
        diffs = h.compare(copy) if resumes[-1].rc == 0 else ["re-run on a roomy disk failed: " + resumes[-1].error_line]
    problems = []
    if r.rc == 0:
        problems.append("the run did not fail (the tmpfs was large enough?)")
    if not space_msg:
        problems.append("the error does not say the disk is full")
    want_steps = [EVERY] if during == "save" else [TOTAL]
    if after["finalized_steps"] != want_steps:
        problems.append(f"finalized steps {after['finalized_steps']}, want {want_steps}")
    if during == "export" and after["export_files"] is not None and "model.safetensors" not in after["export_files"]:
        problems.append(f"half-written export/: {after['export_files']}")
    if any(n.startswith(".export") for n in after["workdir_entries"]):
        problems.append("export temp dir left behind")
    problems += diffs
    outcome = (f"rc {r.rc}: {r.error_line[:140]!r} [{r.error_chars} chars]; finalized {after['finalized_steps']}; "
               f"export {after['export_files']}" + ("" if during == "save" else "; re-run on a roomy disk: " + (
                   "equal to the reference" if not diffs else "; ".join(diffs))))
    return row(name, outcome, not problems, tmpfs_bytes=size, checkpoint_bytes=ckpt, export_bytes=exp,
               run=r.brief(), after=after, resumes=[x.brief() for x in resumes], problems=problems)


# Bad inputs: (name, overrides or a data builder, words the message must contain, run to the end?)
BAD_CONFIG = [
    ("bad_lr_nan", ["--config.optim.learning_rate=nan"], ["learning_rate"], False),
    ("bad_lr_negative", ["--config.optim.learning_rate=-0.001"], ["learning_rate"], False),
    ("bad_num_train_steps_0", ["--config.num_train_steps=0"], ["num_train_steps"], False),
    ("bad_eval_every_-1", ["--config.eval_every=-1"], ["eval_every"], False),
    ("bad_checkpoint_every_-1", ["--config.checkpoint.every=-1"], ["checkpoint.every"], False),
    ("bad_label_smoothing_2", ["--config.label_smoothing=2.0"], ["label_smoothing"], False),
    ("bad_best_metric_typo", ["--config.checkpoint.best_metric=test/acuracy"], ["best_metric"], False),
    ("bad_log_every_0", ["--config.log_every=0"], ["log_every"], False),
    ("bad_grad_accum_steps_0", ["--config.grad_accum_steps=0"], ["grad_accum_steps"], False),
    ("bad_max_length_0", ["--config.data.max_length=0"], ["max_length"], False),
    ("bad_eval_batch_size_0", ["--config.eval_batch_size=0"], ["eval_batch_size"], True),
]


def refused_before_step1(h: Harness, name: str, extra: list[str], words: list[str], to_end: bool,
                         variant: str = "trec,tiny,runlocal") -> dict:
    """Run with ``extra``; desired: exit != 0 before any train row or checkpoint, the message containing
    every word of ``words``. Unless ``to_end``, a run that logs step 1 is stopped there (accepted)."""
    wd = h.base / name
    shutil.rmtree(wd, ignore_errors=True)
    cmd = h.cmd(wd, every=0, variant=variant)
    # a later override of the same key wins in absl; drop the command's own value of these keys
    keys = {e.split("=", 1)[0] for e in extra}
    cmd = [c for c in cmd if c.split("=", 1)[0] not in keys] + extra
    if to_end:
        r = h.run(cmd, name)
    else:
        r = h.run_and_inject(cmd, name, wd, after_step(1), signal.SIGKILL)
    steps, ckpts = train_steps(wd), finalized_steps(wd)
    msg = r.error_line
    named = all(w.lower() in msg.lower() for w in words)
    if r.injected:
        outcome = "accepted: step 1 ran (stopped there by the harness)"
    elif r.rc == 0:
        outcome = f"accepted: ran to the end ({r.status}, {len(steps)} train rows)"
    elif steps:
        outcome = (f"failed after {len(steps)} train rows, checkpoints {ckpts}: {msg[:150]}")
    else:
        outcome = f"refused before step 1: {msg[:150]}" + ("" if named else f" (does not name {words})")
    ok = r.rc not in (0, None) and not r.injected and not steps and not ckpts and named
    return row(name, outcome, ok, run=r.brief(), train_rows=len(steps), finalized_steps=ckpts,
               message_names=words, overrides=extra)


def scenario_bad_data(h: Harness, kind: str) -> dict:
    """A bad record or path in the data: a null text in the eval split, ``data.train`` a directory, a
    non-UTF-8 byte in the train file. Desired: refused before step 1, naming the file (and line)."""
    d = h.base / "bad_data"
    d.mkdir(exist_ok=True)
    train, test = h.data / "trec" / "train.jsonl", h.data / "trec" / "test.jsonl"
    if kind == "null_text_in_eval":
        lines = test.read_text(encoding="utf-8").splitlines(keepends=True)
        rec = json.loads(lines[6])
        rec["text"] = None
        lines[6] = json.dumps(rec) + "\n"
        p = d / "test_null_line7.jsonl"
        p.write_text("".join(lines), encoding="utf-8")
        return refused_before_step1(h, "bad_null_text_in_eval", [f"--config.data.test={p}"],
                                    [p.name, "7"], to_end=True)
    if kind == "train_is_dir":
        return refused_before_step1(h, "bad_train_is_directory", [f"--config.data.train={h.data / 'trec'}"],
                                    ["directory"], to_end=False)
    if kind == "non_utf8":
        raw = train.read_bytes().split(b"\n")
        raw[56] = raw[56].replace(b"?", b"\xff?", 1) if b"?" in raw[56] else raw[56][:-2] + b"\xff" + raw[56][-2:]
        p = d / "train_nonutf8_line57.jsonl"
        p.write_bytes(b"\n".join(raw))
        return refused_before_step1(h, "bad_non_utf8_byte", [f"--config.data.train={p}"],
                                    [p.name, "line 57"], to_end=False)
    raise ValueError(kind)


BUILD_MODEL_DIRS = r"""
import json, shutil, sys
from pathlib import Path
import torch
from transformers import BertConfig, BertModel
torch.manual_seed(0)
out, tok = Path(sys.argv[1]), Path(sys.argv[2])
cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=6, num_attention_heads=2,
                 intermediate_size=128, max_position_embeddings=512)
model = BertModel(cfg)
for name in ("four_layer_config", "no_tokenizer"):
    d = out / name
    model.save_pretrained(d)
four = out / "four_layer_config"
c = json.loads((four / "config.json").read_text()); c["num_hidden_layers"] = 4
(four / "config.json").write_text(json.dumps(c, indent=2))
for f in tok.iterdir():
    if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
        shutil.copy(f, four / f.name)
print("ok")
"""


def scenario_model_dirs(h: Harness) -> list[dict]:
    """``model.init_from`` = a random 6-layer BertModel (transformers, saved locally) whose config.json
    says 4 layers; and the 6-layer one without tokenizer files. Desired: both refused before step 1."""
    ref = h.reference()  # its export holds the tokenizer files to copy
    d = h.base / "model_dirs"
    if not (d / "four_layer_config" / "tokenizer.json").exists():
        shutil.rmtree(d, ignore_errors=True)
        r = subprocess.run([h.python, "-c", BUILD_MODEL_DIRS, str(d), str(ref / "export")], env=h.env,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return [row("model_dirs", f"could not build the model dirs: {r.stderr.strip().splitlines()[-1:]}", False)]
    rows = []
    for name, words in (("four_layer_config", ["layer"]), ("no_tokenizer", ["tokenizer"])):
        rows.append(refused_before_step1(h, f"model_{name}", [f"--config.model.init_from={d / name}"], words,
                                         to_end=False, variant="trec,runlocal"))
    return rows


CHECK_FINITE = r"""
import json, sys
import numpy as np, jax, orbax.checkpoint as ocp
out = {}
for step_dir in sys.argv[1:]:
    try:
        with ocp.PyTreeCheckpointer() as c:
            tree = c.restore(step_dir + "/state")
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        params = [(jax.tree_util.keystr(p), np.asarray(x)) for p, x in flat if "params" in jax.tree_util.keystr(p)]
        bad = [k for k, x in params if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all()]
        out[step_dir] = {"param_leaves": len(params), "nonfinite_param_leaves": len(bad), "examples": bad[:3]}
    except Exception as e:
        out[step_dir] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
print(json.dumps(out))
"""


def scenario_nan(h: Harness) -> dict:
    """``learning_rate=1e39`` with a checkpoint every step: the run must stop naming a last-good
    checkpoint, and every checkpoint left (the named one included) must hold finite parameters."""
    name = "nan_last_good"
    wd = h.base / name
    shutil.rmtree(wd, ignore_errors=True)
    cmd = [c for c in h.cmd(wd, every=1) if not c.startswith("--config.checkpoint.every")]
    r = h.run(cmd + ["--config.checkpoint.every=1", "--config.optim.learning_rate=1e39"], name)
    m = re.search(r"last good checkpoint:? (?:is )?(?:step )?(\d+)", r.full_error_line or r.stderr)
    named = int(m.group(1)) if m else None
    steps = finalized_steps(wd)
    checks = {}
    if steps:
        p = subprocess.run([h.python, "-c", CHECK_FINITE, *[str(wd / "checkpoints" / str(s)) for s in steps]],
                           env=h.env, capture_output=True, text=True, timeout=300)
        try:
            checks = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            checks = {"error": p.stderr.strip()[-300:]}
    by_step = {int(Path(k).name): v for k, v in checks.items() if k != "error"}
    nonfinite = {s: v.get("nonfinite_param_leaves", v.get("error")) for s, v in by_step.items()}
    all_finite = bool(by_step) and all(v == 0 for v in nonfinite.values())
    ok = r.rc not in (0, None) and (named is None or named in by_step) and (all_finite or not steps) \
        and (named is not None or not steps)
    outcome = (f"rc {r.rc}: {r.error_line[:140]!r}; names step {named}; non-finite param leaves per "
               f"checkpoint {nonfinite or 'no checkpoints'}")
    return row(name, outcome, ok, run=r.brief(), named_step=named, finalized_steps=steps, checks=checks)


# ------------------------------------------------------------------------------------------
# The scenario list and the command line
# ------------------------------------------------------------------------------------------

def scenarios(h: Harness, kills: int) -> list[tuple[str, int, Callable[[], list[dict] | dict]]]:
    """(name, phase, thunk) in run order; ``--only`` matches the names. Phase 0 runs first, in order
    (the reference; ``sigkill_in_save`` leaves the two-checkpoint workdir the corruptions start from);
    phase 1 scenarios are independent (own workdirs) and run ``--jobs`` at a time."""
    save_step = h.rng.choice([EVERY, 2 * EVERY])
    plans = random_kill_plans(h.rng, kills)
    ref_row = lambda: row("reference", f"uninterrupted run: {len(metrics_rows(h.reference()))} metrics rows, "
                          "export written", True, export=export_digest(h.reference()))
    out = [("reference", 0, ref_row),
           ("sigkill_in_save", 0, lambda: kill_and_resume(h, "sigkill_in_save", signal.SIGKILL, saving(TOTAL),
                                                          EVERY, keep_copy=h.base / "corrupt_base"))]
    out += [(f"corrupt_{k}", 1, (lambda k=k: scenario_corrupt(h, k))) for k in CORRUPTIONS]
    out += [(p["name"], 1, (lambda p=p: scenario_random_kill(h, p))) for p in plans]
    out += [
        ("sigterm_in_save", 1, lambda: kill_and_resume(h, "sigterm_in_save", signal.SIGTERM, saving(save_step),
                                                       EVERY)),
        ("sigkill_in_final_eval", 1, lambda: kill_and_resume(h, "sigkill_in_final_eval", signal.SIGKILL,
                                                             in_final_eval, 0, needs_final_checkpoint=True)),
        ("sigterm_in_final_eval", 1, lambda: kill_and_resume(h, "sigterm_in_final_eval", signal.SIGTERM,
                                                             in_final_eval, 0, needs_final_checkpoint=True)),
        ("sigkill_in_export", 1, lambda: kill_and_resume(h, "sigkill_in_export", signal.SIGKILL, in_export, 0,
                                                         needs_final_checkpoint=True)),
        ("sigterm_in_export", 1, lambda: kill_and_resume(h, "sigterm_in_export", signal.SIGTERM, in_export, 0,
                                                         needs_final_checkpoint=True)),
        ("two_launchers", 1, lambda: scenario_two_launchers(h)),
        ("disk_full_save", 1, lambda: scenario_disk_full(h, "save")),
        ("disk_full_export", 1, lambda: scenario_disk_full(h, "export")),
    ]
    out += [(n, 1, (lambda n=n, e=e, w=w, t=t: refused_before_step1(h, n, e, w, t))) for n, e, w, t in BAD_CONFIG]
    out += [(f"bad_{k}", 1, (lambda k=k: scenario_bad_data(h, k)))
            for k in ("null_text_in_eval", "train_is_dir", "non_utf8")]
    out.append(("model_dirs", 1, lambda: scenario_model_dirs(h)))
    out.append(("nan_last_good", 1, lambda: scenario_nan(h)))
    return out


def run_scenario(name: str, thunk: Callable[[], list[dict] | dict], say: Callable[[str], None]) -> list[dict]:
    """The rows of one scenario, timed; a harness failure becomes a row (not the end of the run)."""
    t = time.monotonic()
    say(f"{name} ...")
    try:
        got = thunk()
    except Exception as e:  # noqa: BLE001
        got = row(name, f"harness error: {type(e).__name__}: {str(e)[:200]}", False)
    rows = got if isinstance(got, list) else [got]
    for r in rows:
        r["seconds"] = round(time.monotonic() - t, 1)
        say(f"  {r['name']}: {'ok' if r['ok'] else 'NOT OK'} ({r['seconds']} s): {r['outcome'][:200]}")
    return rows


def selected(name: str, only: list[str] | None) -> bool:
    return not only or any(name == o or name.startswith(o) for o in only)


def table(rows: list[dict]) -> str:
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'scenario':<{w}}  ok   outcome", "-" * (w + 80)]
    lines += [f"{r['name']:<{w}}  {'yes' if r['ok'] else 'NO ':<3}  {r['outcome']}" for r in rows]
    return "\n".join(lines)


def git_commit() -> str | None:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="run", help="names the output file faults_<label>.json")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/faults_<label>.json)")
    ap.add_argument("--only", default=None, help="comma-separated scenario names or prefixes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kills", type=int, default=2, help="number of random-point kills")
    ap.add_argument("--base", default=None, help="work directory (default: a new temp dir)")
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "jaxbert_faults_jit_cache"),
                    help="persistent JAX compilation cache shared by every launcher run")
    ap.add_argument("--jobs", type=int, default=2, help="independent scenarios run at a time")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO / "benchmarks"))
    import common  # noqa: E402 - the benchmarks' machine description
    say = common.say
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the launchers too (finally below)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    base = Path(args.base) if args.base else Path(tempfile.mkdtemp(prefix="jaxbert_faults_"))
    h = Harness(base, seed=args.seed, cache_dir=Path(args.cache_dir), say=say)
    t0 = time.monotonic()
    load_before = common.load_average()
    todo = [(n, p, f) for n, p, f in scenarios(h, args.kills) if selected(n, only)]
    rows: list[dict] = []
    try:
        for name, _, thunk in [t for t in todo if t[1] == 0]:
            rows += run_scenario(name, thunk, say)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_scenario, name, thunk, say) for name, p, thunk in todo if p == 1]
            for fut in futures:  # rows in scenario order
                rows += fut.result()
    finally:
        h.kill_all()
        if not args.keep and not args.base:
            shutil.rmtree(base, ignore_errors=True)
    payload = {"label": args.label, "commit": git_commit(), "time": common.now_iso(), "seed": args.seed,
               "kills": args.kills, "jobs": args.jobs, "only": only, "total_steps": TOTAL, "checkpoint_every": EVERY,
               "runtime_s": round(time.monotonic() - t0, 1), "load_average_before": load_before,
               "machine": common.machine(), "ok": sum(r["ok"] for r in rows), "rows": rows,
               "base": str(base) if (args.keep or args.base) else None}
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"faults_{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(table(rows))
    print(f"{payload['ok']} of {len(rows)} rows ok; {payload['runtime_s']} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
