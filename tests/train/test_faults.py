"""Fault injection from outside the launcher (``benchmarks/faults.py``): the scenarios that must hold.

Each test is one harness scenario driving ``python -m experiments.launch`` (tiny BERT, 12 steps,
``trec,tiny,runlocal``) through signals and files, compared with one uninterrupted reference run:

* a SIGKILL inside the final checkpoint save leaves the two earlier checkpoints finalized and
  the unfinished save unlisted (holds on main before issue #21);
* that workdir with its latest checkpoint's largest array file truncated, re-run with the same
  command: falls back to the previous step, names the bad one in a line, and ends with the
  reference's metrics rows, eval results and export bytes (**fails before #21**: the run stops);
* a second launcher on a busy workdir is refused naming the first one's pid, and the first ends
  equal to the reference (**fails before #21**: no lock, two histories in metrics.jsonl);
* ``optim.learning_rate=nan`` is refused before step 1 with the key named (**fails before #21**).

Six launches, three at a time in two phases (module-scoped fixture), sharing the persistent
compilation cache of ``test_train_resume.py``. Plain resume equality after kills is also covered
by ``test_train_resume.py``; the full matrix is ``benchmarks/faults.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_harness():
    spec = importlib.util.spec_from_file_location("jaxbert_faults_harness", REPO / "benchmarks" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


faults = _load_harness()


@pytest.fixture(scope="module")
def rows(tmp_path_factory, data_dir):
    """name -> harness row (or the killed Run), for the scenarios below."""
    base = tmp_path_factory.mktemp("faults")
    h = faults.Harness(base, seed=0, data_src=data_dir,
                       cache_dir=tmp_path_factory.getbasetemp() / "jax_compilation_cache", say=lambda m: None)
    killed_wd = base / "sigkill_in_save"

    def kill_inside_last_save():
        run = h.run_and_inject(h.cmd(killed_wd, every=faults.EVERY), "sigkill_in_save", killed_wd,
                               faults.saving(faults.TOTAL), signal.SIGKILL)
        shutil.copytree(killed_wd, base / "corrupt_base", symlinks=True)  # what scenario_corrupt starts from
        return run

    out = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        # phase 1: the reference; a run killed inside its last save (steps 4 and 8 saved); a bad value
        ref = pool.submit(h.reference)
        kill = pool.submit(kill_inside_last_save)
        bad = pool.submit(faults.refused_before_step1, h, "bad_lr_nan", ["--config.optim.learning_rate=nan"],
                          ["learning_rate"], False)
        ref.result()
        out["sigkill_in_save"] = (kill.result(), faults.finalized_steps(killed_wd))
        out["bad_lr_nan"] = bad.result()
        # phase 2: the latest checkpoint of the killed workdir truncated, resumed; two launchers on one workdir
        corrupt = pool.submit(faults.scenario_corrupt, h, "truncate")
        two = pool.submit(faults.scenario_two_launchers, h)
        out["corrupt_truncate"] = corrupt.result()
        out["two_launchers"] = two.result()
    return out


def test_sigkill_inside_a_save_leaves_the_earlier_checkpoints(rows):
    run, finalized = rows["sigkill_in_save"]
    assert run.injected == "SIGKILL", f"the run ended before its last save: rc {run.rc} {run.error_line}"
    assert any(e.startswith(f"{faults.TOTAL}.") or e == str(faults.TOTAL)
               for e in run.at_injection["checkpoint_entries"]), run.at_injection
    assert finalized == [faults.EVERY, 2 * faults.EVERY]  # the unfinished save is not listed


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_step(rows):
    # fails before issue #21: the run stops with a KB-long tensorstore error, no fallback
    r = rows["corrupt_truncate"]
    assert r["ok"], r["outcome"]
    assert r["detail"]["start_steps"][0] == faults.EVERY
    assert r["detail"]["lines_naming_step_8"], "no one-line message names the corrupt step"


def test_second_launcher_on_a_busy_workdir_is_refused(rows):
    # fails before issue #21: B trains too, A crashes, metrics.jsonl holds two histories
    r = rows["two_launchers"]
    assert r["ok"], r["outcome"]


def test_nan_learning_rate_is_refused_before_step_1(rows):
    # fails before issue #21: the value is accepted and training starts
    r = rows["bad_lr_nan"]
    assert r["ok"], r["outcome"]
    assert r["detail"]["train_rows"] == 0 and r["detail"]["finalized_steps"] == []
