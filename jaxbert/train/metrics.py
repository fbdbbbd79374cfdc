"""Where metrics go: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, a progress bar.

Only process 0 writes. ``metrics.jsonl`` lines look like::

    {"step": 100, "split": "train", "loss": 0.41, "accuracy": 0.83, "learning_rate": 4.1e-05,
     "tokens_per_sec": 10512.3, "examples_per_sec": 181.2, "elapsed_s": 61.0}

On resume the file is truncated to the restored step, so it never holds two histories; an
evaluation that is redone (after a preemption or failure inside it, or by ``--eval_only``) first
drops the rows of its step (:meth:`MetricsWriter.drop_rows`), so a step never has two sets.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import jax
import numpy as np


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN; keep it visible
    return v


def append_row(workdir: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one event row (e.g. ``{"step": 40, "split": "config_change", ...}``) to ``metrics.jsonl``.

    For events outside the training loop; process 0 only, like :class:`MetricsWriter`. Its
    ``step`` decides whether a later resume keeps it (rows of steps after the restored one go).
    """
    if jax.process_index() != 0:
        return
    with open(Path(workdir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")


class MetricsWriter:
    """Append-only metrics sink for one workdir."""

    def __init__(self, workdir: str | os.PathLike, total_steps: int | None = None, resume_step: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.is_main = jax.process_index() == 0
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not self.is_main:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=resume_step or None)
        if progress and total_steps:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, initial=resume_step, desc="train", unit="step",
                             dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

    def _truncate_after(self, step: int) -> None:
        """Drop lines of steps > ``step`` (left by a run that died after its last checkpoint)."""
        self._rewrite(lambda row: row.get("step", 0) <= step)

    def drop_rows(self, step: int, splits: Iterable[str]) -> None:
        """Drop the rows of ``step`` whose split is in ``splits`` (process 0; a no-op elsewhere).

        Called before an evaluation of ``step`` is (re)done, so that the partial rows of an
        interrupted try, or the rows of an earlier evaluation redone with ``--eval_only``, are
        replaced instead of repeated. Other steps' rows and this step's train row stay.
        """
        if not self.is_main:
            return
        splits = set(splits)
        self._rewrite(lambda row: not (row.get("step") == step and row.get("split") in splits))

    def _rewrite(self, keep_row) -> None:
        """Keep the lines whose row passes ``keep_row`` (torn lines go); atomic, skipped when all pass."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                if keep_row(json.loads(line)):
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
        if len(keep) == len(lines):
            return
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(l + "\n" for l in keep))
        os.replace(tmp, self.path)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        row = {"step": int(step), "split": split, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float, np.number)) and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def progress(self, step: int, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.n = step
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                      refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


class Throughput:
    """Examples / tokens per second between two log points."""

    def __init__(self):
        self.start = time.perf_counter()
        self._t = self.start
        self._examples = 0
        self._tokens = 0

    def add(self, examples: int, tokens: int) -> None:
        self._examples += examples
        self._tokens += tokens

    def rates(self) -> dict[str, float]:
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        out = {"examples_per_sec": self._examples / dt, "tokens_per_sec": self._tokens / dt,
               "elapsed_s": now - self.start}
        self._t, self._examples, self._tokens = now, 0, 0
        return out
