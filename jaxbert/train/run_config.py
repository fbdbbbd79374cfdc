"""The config of every run segment, and resumes that would silently change the trajectory.

Files in the workdir
  ``config.json``            the config of the latest segment (plain, as before: tools read it).
  ``config_history.jsonl``   append-only, one line per segment start (a fresh start or a resume):
                             ``{"start_step", "started_at", "config", "data_files", "changes"}``.
                             ``data_files`` maps each config key under ``data`` that names a local
                             file to ``{"path", "bytes", "sha256"}``; ``changes`` lists the keys that
                             differ from the segment resumed from. Nothing in it is rewritten, so the
                             first segment's settings are always there.

On resume (the workdir holds a finalized checkpoint at step S) the new config is compared with
the last history line whose ``start_step <= S`` (the settings the run was continuing with; a
workdir from before the history falls back to ``config.json``, without content hashes). A
difference in a key that can change the optimisation trajectory, or in the content hash of such a
data file, stops the run before step S+1 with every changed key named, unless
``allow_config_change=True``: then it goes on and writes one row
``{"step": S, "split": "config_change", "changes": [{"key", "old", "new"}, ...]}`` to
``metrics.jsonl``.

What changes the trajectory: everything except the keys in :data:`NEUTRAL_KEYS` /
:data:`NEUTRAL_PREFIXES` (logging, evaluation, checkpoint retention, progress, TensorBoard,
export, parallel layout, debug hooks). A key not listed there (learning rate, schedule,
optimizer, total steps or epochs, batch size, grad accumulation, seed, dropout and other model
overrides, PEFT, tokenizer, max length, buckets, training data files and their content, every
task-specific key) counts as a change, and so does a key that one config has and the other not.

The check runs on process 0 (which also writes the files); the verdict is shared with every
process so a refused multi-process run stops on all of them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

HISTORY_NAME = "config_history.jsonl"
LATEST_NAME = "config.json"
CHANGE_SPLIT = "config_change"  # the metrics.jsonl "split" of a recorded change

# Keys that cannot alter the optimisation trajectory (exact flattened names) ...
NEUTRAL_KEYS = frozenset({
    "allow_config_change",
    "log_every", "progress", "tensorboard",
    "eval_every", "eval_batch_size", "eval_splits",
    "export_hf",
    "data.validation", "data.test",  # evaluation files
    "data.eval_max_length", "data.eval_buckets", "data.strict_spans",
    "qa.max_answer_length", "qa.null_score_diff_threshold",  # answer decoding at evaluation
    "multilabel.tune_thresholds", "multilabel.default_threshold",  # prediction thresholds
    "contrastive.eval_domain",
    # Parallel layout: the same computation on another mesh (float reduction order may differ).
    "mesh", "logical_axis_rules",
    "model.overrides.remat",  # recomputation in the backward pass, same values
})
# ... and prefixes: checkpoint cadence/retention/ranking, evaluation suites, debug hooks.
NEUTRAL_PREFIXES = ("checkpoint.", "evals.", "debug_")

_HASH_CHUNK = 1 << 20


class ConfigChangeError(ValueError):
    """A resume whose config would change the optimisation trajectory (and no allow_config_change)."""


@dataclass(frozen=True)
class ConfigChange:
    """One key whose value differs between the saved and the new config (``old``/``new`` JSON values)."""

    key: str
    old: Any
    new: Any
    trajectory: bool  # True: can alter the optimisation trajectory

    def describe(self) -> str:
        return f"{self.key}: {_short(self.old)} -> {_short(self.new)}"

    def as_row(self) -> dict[str, Any]:
        return {"key": self.key, "old": self.old, "new": self.new}


_ABSENT = "<absent>"


def _short(v: Any, limit: int = 120) -> str:
    s = json.dumps(v) if v is not _ABSENT else _ABSENT
    return s if len(s) <= limit else s[:limit] + "..."


def affects_trajectory(key: str) -> bool:
    """Whether a change of the flattened config ``key`` (e.g. ``"optim.learning_rate"``) counts."""
    return key not in NEUTRAL_KEYS and not key.startswith(NEUTRAL_PREFIXES)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and other values are leaves)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def data_file_hashes(flat_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: {"path", "bytes", "sha256"}}`` for each ``data.*`` key whose value names a local file.

    Directories, globs, remote paths and dataset names are not hashed (their key's value still counts).
    """
    out = {}
    for key, value in sorted(flat_config.items()):
        if not key.startswith("data.") or not isinstance(value, str) or not value:
            continue
        path = Path(os.path.expanduser(value))
        if path.is_file():
            out[key] = {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                   old_files: Mapping[str, Mapping[str, Any]] | None,
                   new_files: Mapping[str, Mapping[str, Any]]) -> list[ConfigChange]:
    """Every key (flattened) whose value differs, plus data files whose content hash differs.

    ``old_files`` None: the saved config has no hashes (a workdir from before the history), so
    only the values are compared. A file change is reported as key ``"<key> (sha256 of <path>)"``.
    """
    old_flat, new_flat = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        a, b = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        if a != b:
            changes.append(ConfigChange(key, a, b, affects_trajectory(key)))
    if old_files is not None:
        for key in sorted(set(old_files) & set(new_files)):
            a, b = old_files[key]["sha256"], new_files[key]["sha256"]
            if a != b:
                changes.append(ConfigChange(f"{key} (sha256 of {new_files[key]['path']})", a, b,
                                            affects_trajectory(key)))
    return changes


def latest_checkpoint_step(workdir: str | os.PathLike) -> int | None:
    """The newest finalized step under ``workdir/checkpoints`` (what a resume starts from), or None."""
    from jaxbert.train.checkpoint import CHECKPOINTS_SUBDIR, STEP_MARKER

    directory = Path(workdir) / CHECKPOINTS_SUBDIR
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / STEP_MARKER).exists()]
    return max(steps) if steps else None


def read_history(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The segments recorded in ``workdir/config_history.jsonl``, oldest first (a torn last line is skipped)."""
    path = Path(workdir) / HISTORY_NAME
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return rows


def _baseline(workdir: Path, resume_step: int) -> tuple[dict | None, dict | None, str]:
    """(config, data_files or None, where) of the segment a resume at ``resume_step`` continues."""
    rows = [r for r in read_history(workdir) if int(r.get("start_step", 0)) <= resume_step]
    if rows:
        r = rows[-1]
        return r["config"], r.get("data_files"), f"{workdir / HISTORY_NAME} (segment from step {r['start_step']})"
    legacy = workdir / LATEST_NAME
    if legacy.exists():
        return json.loads(legacy.read_text()), None, f"{legacy} (no content hashes recorded)"
    return None, None, ""


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def check_and_record(workdir: str | os.PathLike, config: Mapping[str, Any], allow_change: bool = False,
                     say: Callable[[str], None] | None = None) -> list[ConfigChange]:
    """Compare ``config`` (a JSON-like dict) with the segment a resume continues; record the segment.

    Process-local: call it from process 0 only (see :func:`record_run_config`). Raises
    :class:`ConfigChangeError` naming every trajectory-changing key (nothing is written then).
    Returns the differences found (empty on a fresh start).
    """
    from jaxbert.train.metrics import append_row

    workdir = Path(workdir)
    say = say or (lambda msg: print(f"[jaxbert] {msg}", file=sys.stderr, flush=True))
    files = data_file_hashes(flatten(config))
    step = latest_checkpoint_step(workdir)
    changes: list[ConfigChange] = []
    if step is not None:
        old, old_files, where = _baseline(workdir, step)
        if old is None:
            say(f"resuming at step {step} of {workdir} without a saved config to compare with")
        else:
            changes = config_changes(old, config, old_files, files)
        significant = [c for c in changes if c.trajectory]
        if significant and not allow_change:
            raise ConfigChangeError(
                f"resuming {workdir} at step {step} with a config that changes the optimisation trajectory: "
                f"{'; '.join(c.describe() for c in significant)} (saved config: {where}). Resume with the "
                "saved values, use a new --workdir, or pass --config.allow_config_change=true to go on "
                "anyway (the change is recorded in metrics.jsonl)")
        if significant:
            append_row(workdir, {"step": step, "split": CHANGE_SPLIT,
                                 "changes": [c.as_row() for c in significant]})
            say(f"allow_config_change: resuming at step {step} with "
                f"{'; '.join(c.describe() for c in significant)} (recorded in {workdir / 'metrics.jsonl'})")
    row = {"start_step": step or 0,
           "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "config": config, "data_files": files,
           "changes": [{**c.as_row(), "trajectory": c.trajectory} for c in changes]}
    with open(workdir / HISTORY_NAME, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _write_json_atomic(workdir / LATEST_NAME, config)
    return changes


def record_run_config(workdir: str | os.PathLike, config: Mapping[str, Any], allow_change: bool = False) -> None:
    """:func:`check_and_record` on process 0, with its verdict shared by every process.

    A refusal raises on every process (process 0 with the full message), so no process is left
    waiting in a collective of a run that stopped.
    """
    import jax

    from jaxbert.train.preemption import any_process

    error = None
    if jax.process_index() == 0:
        try:
            check_and_record(workdir, config, allow_change)
        except ConfigChangeError as e:
            error = e
    if jax.process_count() > 1 and any_process(error is not None) and error is None:
        raise ConfigChangeError(f"process 0 refused to resume {workdir} with this config (its error names "
                                f"the changed keys); process {jax.process_index()} stops too")
    if error is not None:
        raise error
