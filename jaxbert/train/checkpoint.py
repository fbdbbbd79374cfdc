"""Checkpointing of training state over ``orbax.checkpoint.CheckpointManager``.

One :class:`Checkpointer` per run directory::

    with Checkpointer(workdir, keep_last=3, keep_best=1, best_metric="eval/accuracy") as ckpt:
        restored = ckpt.restore(abstract_state=abstract)  # None on a fresh run
        if restored is not None:
            state, extra = restored
            data_iter.set_state(extra["data"])
        ...
        ckpt.save(step, state, extra={"data": data_iter.get_state(), "config": cfg.to_dict()},
                  metrics={"eval/accuracy": acc})

On-disk layout (``workdir/checkpoints/<step>/``, written by orbax)::

    checkpoints/
      1000/
        _CHECKPOINT_METADATA      step metadata; its presence marks a finalized step
        state/                    the array pytree (orbax PyTree handler, OCDBT/TensorStore)
        extra/metadata            the caller's JSON dict (data-iterator state, config, labels, ...)
        meta/metadata             jaxbert's own JSON: format version, metrics, PRNG key impls
        metrics/metrics           the metrics orbax ranks by (only when ``best_metric`` is set)
        checksums.json            size + sha256 of every file above (jaxbert.train.integrity)
      1000.orbax-checkpoint-tmp-<ts>/   an unfinished save: never listed, never restored
      900.corrupt-checksum/     a step that failed to restore, moved aside (never deleted)

Guarantees:

* A save is written to a temporary directory and renamed when complete (orbax's atomic
  rename; on GCS a ``commit_success.txt`` file). :meth:`Checkpointer.all_steps` and
  :meth:`Checkpointer.latest_step` list only finalized steps, so an interrupted save never
  hides the last good checkpoint.
* Old steps are deleted only after the new step is finalized (orbax deletes in its finalize
  phase, after the write has committed). Retention keeps the ``keep_last`` newest finalized
  steps *plus* the ``keep_best`` best by ``best_metric``; directories that are not finalized
  checkpoints are never deleted and never count toward ``keep_last``.
* Typed PRNG keys (``jax.random.key``) anywhere in the state are stored as their raw
  ``uint32`` key data and rebuilt on restore (the implementation name is recorded), so the
  caller may keep typed keys in the state.
* Restoring checks the requested tree against the checkpoint's metadata first and raises
  :class:`CheckpointMismatchError` listing missing/unexpected key paths and shape/dtype
  mismatches; unreadable or incomplete step directories raise :class:`CheckpointError`
  naming the directory, the step and the problem.
* Integrity: once orbax has finalized a step (for async saves: in :meth:`Checkpointer.wait`),
  process 0 writes ``checksums.json`` (:mod:`jaxbert.train.integrity`); a restore verifies every
  file against it before any array is read (sizes first, then sha256), so flipped bytes, a
  truncated or missing file and damaged JSON are caught instead of restoring wrong values.
  Steps written before the manifest existed (or whose save was cut between orbax's finalize and
  the manifest) are restored unverified, with a warning.
* Fallback: when the *latest* step cannot be restored because its files are damaged,
  :meth:`Checkpointer.restore` moves it aside to ``<step>.corrupt-<reason>`` (never deletes it),
  logs one line naming the step, the file and the reason, and restores the previous finalized
  step, and so on; with ``fallback=False`` it raises a one-line :class:`CheckpointCorruptError`
  naming the step and the file instead. A step that passes its checksums but still fails in orbax
  (out of memory, a backend bug) is not corrupt on disk: that error is raised, nothing is moved.
  Error messages are one line; the backend's (TensorStore's) full error text, with its multi-KB
  spec, is shown only with ``JAXBERT_DEBUG=1`` in the environment.

Sharded state: pass ``abstract_state`` as a pytree of ``jax.ShapeDtypeStruct`` carrying
``.sharding`` (e.g. ``jax.eval_shape`` of the jitted init with ``out_shardings``, or
:func:`abstract_like` of a live state); restored arrays come back with exactly those shardings,
whatever mesh wrote the checkpoint. In multi-process runs every process must call
:meth:`Checkpointer.save` and :meth:`Checkpointer.restore` (they are collective).

Preemption (the SIGTERM flag polled at step boundaries) lives in :mod:`jaxbert.train.preemption`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import BestN, LatestN

from jaxbert.models.params import path_str
from jaxbert.train import integrity

from jaxbert.convert.report import CheckpointMismatchError  # the one mismatch error type (also HF loads)

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
    "abstract_like",
    "pack_prng_keys",
    "unpack_prng_keys",
]

log = logging.getLogger(__name__)

# 2: the step directory carries checksums.json (written after orbax finalizes the step).
FORMAT_VERSION = 2
CHECKPOINTS_SUBDIR = "checkpoints"
# Written by orbax into every step directory as part of the save; a step directory without it
# was not written (completely) by orbax.
STEP_MARKER = "_CHECKPOINT_METADATA"
# Written by orbax when saving to object stores (GCS) instead of an atomic rename.
COMMIT_MARKER = "commit_success.txt"
STATE, EXTRA, META = "state", "extra", "meta"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or unreadable."""


class CheckpointCorruptError(CheckpointError):
    """A finalized step whose files are damaged: ``step``, ``file`` (path) and ``reason`` (short kind).

    ``reason`` is one of ``missing-file``, ``size``, ``checksum``, ``unreadable-file``,
    ``bad-manifest`` (from the checksums), ``missing-state``, ``bad-metadata``, ``bad-array-metadata``,
    ``bad-array-data`` (from reading a step that has no checksums).
    """

    def __init__(self, message: str, *, step: int, file: str, reason: str):
        super().__init__(message)
        self.step, self.file, self.reason = step, file, reason


DEBUG_ENV = "JAXBERT_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from (outermost first)."""
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _chain_text(e: BaseException) -> str:
    return "\n".join(f"{type(x).__name__}: {x}" for x in _chain(e))


def _brief(e: BaseException, limit: int = 300) -> str:
    """One line for ``e``, unless ``JAXBERT_DEBUG`` is set (then the whole chain, spec included).

    orbax wraps the backend's error in one that embeds the TensorStore spec (several KB): the line
    is the innermost error of the chain with the spec and source locations cut.
    """
    full = _chain_text(e)
    if _debug():
        return full
    root = _chain(e)[-1]
    text = f"{type(root).__name__}: {root}".split("See full TensorStore details")[0]
    text = re.sub(r"\s*\[(tensorstore_spec|source locations)='.*?'\]", "", text, flags=re.S)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "..."
    if text != " ".join(full.split()):
        text += f" (the backend's full error: rerun with {DEBUG_ENV}=1)"
    return text


def _cause(e: BaseException) -> BaseException | None:
    """The exception to chain from: the backend's under ``JAXBERT_DEBUG``, none otherwise (one line)."""
    return e if _debug() else None


# --------------------------------------------------------------------------------------------
# Pytree helpers
# --------------------------------------------------------------------------------------------

def _path_str(path: Sequence[Any]) -> str:
    return path_str(path) or "<root>"


def _is_prng_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl_name(key: Any) -> str:
    """Implementation name of a typed key array or of an abstract one."""
    if isinstance(key, jax.Array):
        return str(jax.random.key_impl(key))
    # Abstract key (ShapeDtypeStruct): the dtype knows its implementation; there is no public
    # accessor for it, so fall back to matching the dtype against the registered names.
    impl = getattr(key.dtype, "_impl", None)
    if impl is not None and getattr(impl, "name", None):
        return impl.name
    for name in ("threefry2x32", "rbg", "unsafe_rbg"):
        if jax.eval_shape(lambda: jax.random.key(0, impl=name)).dtype == key.dtype:
            return name
    raise CheckpointError(f"cannot determine the PRNG implementation of key dtype {key.dtype}")


def pack_prng_keys(tree: Any) -> tuple[Any, dict[str, str]]:
    """Replaces typed PRNG key arrays with their ``uint32`` key data.

    Returns ``(tree, impls)`` with ``impls`` mapping each replaced leaf's path (``a/b/0``) to
    its implementation name. :class:`Checkpointer` does this itself; the function is public for
    callers that store state elsewhere.
    """
    impls: dict[str, str] = {}

    def pack(path, x):
        if _is_prng_key(x):
            impls[_path_str(path)] = _key_impl_name(x)
            return jax.random.key_data(x)
        return x

    return jax.tree_util.tree_map_with_path(pack, tree), impls


def unpack_prng_keys(tree: Any, impls: Mapping[str, str]) -> Any:
    """Inverse of :func:`pack_prng_keys`: wraps the listed ``uint32`` leaves back into keys."""

    def unpack(path, x):
        name = impls.get(_path_str(path))
        return jax.random.wrap_key_data(x, impl=name) if name is not None else x

    return jax.tree_util.tree_map_with_path(unpack, tree)


def _default_sharding() -> jax.sharding.Sharding:
    if jax.process_count() == 1:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("_replica",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """A restore target from a live state (or from ``jax.eval_shape`` output).

    ``jax.Array`` leaves become ``jax.ShapeDtypeStruct`` with the array's sharding; when
    ``shardings`` (a matching pytree of ``jax.sharding.Sharding``, or one sharding for all) is
    given it replaces them. Other leaves (Python scalars, numpy arrays) are kept.
    """
    def one(x, sh=None):
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            sh = sh if sh is not None else getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
        return x

    if shardings is None:
        return jax.tree.map(one, tree)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def _key_data_target(path: str, x: Any) -> jax.ShapeDtypeStruct:
    """The ``uint32`` key-data target of an abstract/concrete typed key leaf."""
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    sh = getattr(x, "sharding", None)
    if sh is not None and not isinstance(
        sh, (jax.sharding.NamedSharding, jax.sharding.SingleDeviceSharding)
    ):
        raise CheckpointError(
            f"PRNG key leaf {path!r} has sharding {type(sh).__name__}; only NamedSharding and "
            "SingleDeviceSharding are supported for keys"
        )
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sh)


def _replace_text(path: epath.Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename (never half-written)."""
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)


def _check_json(obj: Any, where: str) -> None:
    """Raises TypeError naming the first non-JSON value inside ``obj``."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return
    if isinstance(obj, float):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is {type(k).__name__}; JSON keys must be str")
            _check_json(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_json(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is {type(obj).__name__} ({obj!r:.80}), not JSON-serializable; convert it "
        "(e.g. int(x), float(x), x.tolist()) before saving"
    )


def _to_float(v: Any) -> Any:
    if isinstance(v, (bool, str)) or v is None:
        return v
    try:
        return float(np.asarray(v))
    except (TypeError, ValueError):
        return v


def _all_processes_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every process. A collective when ``process_count() > 1``."""
    if jax.process_count() == 1:
        return bool(ok)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(int(bool(ok)), np.int32))))


# --------------------------------------------------------------------------------------------
# Retention policy
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _LastNPlusBestK:
    """orbax ``PreservationPolicy``: keep the ``n`` newest finalized steps and the ``k`` best.

    The ranking is orbax's: :class:`LatestN` over the finalized steps and :class:`BestN` over the
    finalized steps that carry the metric (ties go to the newer step). Two rules of ours sit
    around them, because orbax's policies do not have them: step directories that are not
    finalized checkpoints (no step marker) are always preserved (this layer never deletes what it
    did not write) and do not count toward ``n``; and a step without the metric (or with a NaN)
    is kept by ``n`` only (orbax's ``BestN`` keeps every step while there are at most ``k``, and
    ranks a metrics dict that lacks the key instead of skipping it).
    """

    is_valid: Callable[[int], bool]
    n: int | None
    k: int | None
    metric: str | None
    mode: str
    pending_step: int | None = None

    def metric_value(self, metrics: Any) -> float | None:
        if self.metric is None or not isinstance(metrics, Mapping) or self.metric not in metrics:
            return None
        try:
            v = float(metrics[self.metric])
        except (TypeError, ValueError):
            return None
        return None if math.isnan(v) else v

    def should_preserve(self, checkpoints, *, context=None) -> list[bool]:
        valid = [i for i, c in enumerate(checkpoints) if c.step == self.pending_step or self.is_valid(c.step)]
        keep = [True] * len(checkpoints)
        for i in valid:
            keep[i] = False

        def apply(policy, indices: list[int]) -> None:
            flags = policy.should_preserve([checkpoints[i] for i in indices], context=context)
            for i, flag in zip(indices, flags):
                keep[i] = keep[i] or bool(flag)

        apply(LatestN(n=self.n), valid)
        if self.k:
            scored = [i for i in valid if self.metric_value(checkpoints[i].metrics) is not None]
            apply(BestN(get_metric_fn=self.metric_value, reverse=self.mode == "min", n=self.k,
                        keep_checkpoints_without_metrics=False), scored)
        return keep


# --------------------------------------------------------------------------------------------
# Checkpointer
# --------------------------------------------------------------------------------------------

class Checkpointer:
    """Saves and restores ``(array pytree, JSON extra)`` checkpoints under ``workdir/checkpoints``.

    Args:
      workdir: run directory (local path or ``gs://``); checkpoints go to ``workdir/checkpoints``.
      keep_last: number of newest finalized steps to keep (``None``: keep all).
      keep_best: additionally keep this many best steps by ``best_metric`` (``None``: none).
      best_metric: key in the ``metrics`` dict passed to :meth:`save` that ranks checkpoints.
        Steps saved without it are retained by ``keep_last`` only.
      best_mode: ``"max"`` or ``"min"``.
      async_save: write in a background thread; :meth:`save` returns once the arrays are copied
        off the devices (so the caller may donate/overwrite them). Call :meth:`wait` or
        :meth:`close` before exiting.
      save_interval_steps: when set, :meth:`save` skips steps that are not multiples of it
        unless ``force=True`` (for the final or preemption save).
      fallback: when the latest step's files are damaged, :meth:`restore` moves it aside and
        restores the previous finalized step (``True``), or raises :class:`CheckpointCorruptError`
        (``False``; config key ``checkpoint.fallback``).
    """

    def __init__(
        self,
        workdir: str | epath.PathLike,
        keep_last: int | None = 3,
        keep_best: int | None = None,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = False,
        save_interval_steps: int | None = None,
        fallback: bool = True,
    ):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
        if keep_best is not None and keep_best < 0:
            raise ValueError(f"keep_best must be >= 0 or None, got {keep_best}")
        if keep_best and best_metric is None:
            raise ValueError("keep_best needs best_metric (the metrics key to rank by)")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if save_interval_steps is not None and save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")

        # orbax refuses relative paths ("Checkpoint path should be absolute"); a local workdir such
        # as the README's `runs/...` is made absolute here, remote ones (gs://...) are left alone.
        local = "://" not in os.fspath(workdir)
        self.workdir = epath.Path(os.path.abspath(os.fspath(workdir))) if local else epath.Path(workdir)
        self.directory = self.workdir / CHECKPOINTS_SUBDIR
        self.keep_last, self.keep_best = keep_last, keep_best
        self.best_metric, self.best_mode = best_metric, best_mode
        self.async_save = async_save
        self.save_interval_steps = save_interval_steps
        self.fallback = bool(fallback)
        self._manifest_pending: list[int] = []  # async saves whose checksums wait for finalization
        self._is_gcs = str(self.directory).startswith("gs://")

        self._policy = _LastNPlusBestK(
            is_valid=self._is_finalized, n=keep_last, k=keep_best, metric=best_metric,
            mode=best_mode,
        )
        options = ocp.CheckpointManagerOptions(
            # Every save() call that reaches orbax is meant to be written; interval logic is ours.
            save_interval_steps=1,
            preservation_policy=self._policy,
            # best_fn only makes orbax record `metrics`; ranking is done by the policy above.
            best_fn=(self._best_fn if best_metric is not None else None),
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            create=True,
        )
        handlers = {
            STATE: ocp.PyTreeCheckpointHandler(),
            EXTRA: ocp.JsonCheckpointHandler(),
            META: ocp.JsonCheckpointHandler(),
        }
        try:
            self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        except Exception as e:  # noqa: BLE001 - re-raised with the directory named
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {e}") from e
        self._closed = False

    # ---- listing ---------------------------------------------------------------------------

    def _best_fn(self, metrics: Any) -> float:
        v = self._policy.metric_value(metrics)
        if v is None:
            return -math.inf if self.best_mode == "max" else math.inf
        return v

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(int(step))

    def _finalization_problem(self, step: int) -> str | None:
        """None when ``step`` is a finalized checkpoint, else what is wrong with it."""
        d = self.step_dir(step)
        if not d.exists():
            return "does not exist"
        if not d.is_dir():
            return "is not a directory"
        if not (d / STEP_MARKER).exists():
            return (f"is not a finalized checkpoint (no {STEP_MARKER}; probably an interrupted "
                    "or foreign write)")
        if self._is_gcs and not (d / COMMIT_MARKER).exists():
            return f"is not a finalized checkpoint (no {COMMIT_MARKER}; interrupted save)"
        return None

    def _is_finalized(self, step: int) -> bool:
        return self._finalization_problem(step) is None

    def _candidate_steps(self) -> list[int]:
        if not self.directory.exists():
            return []
        steps = []
        for p in self.directory.iterdir():
            name = p.name
            if name.isdigit() and _TMP_SUFFIX not in name:
                steps.append(int(name))
        return sorted(steps)

    def all_steps(self) -> list[int]:
        """Finalized steps on disk, ascending (read from the directory, not a cache)."""
        good = []
        for s in self._candidate_steps():
            problem = self._finalization_problem(s)
            if problem is None:
                good.append(s)
            else:
                log.warning("ignoring %s: %s", self.step_dir(s), problem)
        return good

    def latest_step(self) -> int | None:
        """The newest finalized step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict | None:
        """The metrics saved with ``step`` (None when none were given)."""
        meta = self._read_json(step, META)
        return meta.get("metrics")

    def best_step(self) -> int | None:
        """The finalized step with the best ``best_metric`` (None when no step has it)."""
        if self.best_metric is None:
            raise ValueError("best_step() needs best_metric")
        best = None
        for s in self.all_steps():
            v = self._policy.metric_value(self.metrics(s))
            if v is None:
                continue
            better = best is None or (v >= best[0] if self.best_mode == "max" else v <= best[0])
            if better:
                best = (v, s)
        return None if best is None else best[1]

    def should_save(self, step: int) -> bool:
        return self.save_interval_steps is None or step % self.save_interval_steps == 0

    # ---- save ------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        extra: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` (array pytree) and ``extra`` (JSON dict) as ``step``.

        Returns True when a save was started (finished, unless ``async_save``), False when the
        step was skipped: not on the save interval (and not ``force``), or ``step`` is already
        the latest finalized checkpoint. Raises :class:`CheckpointError` when a newer
        finalized step exists (resuming from an older step would let retention delete the new
        saves first; remove or restore from the newer step instead).
        """
        self._check_open()
        step = int(step)
        if not force and not self.should_save(step):
            return False
        extra = dict(extra or {})
        _check_json(extra, "extra")
        metrics = None if metrics is None else {str(k): _to_float(v) for k, v in metrics.items()}
        if metrics is not None:
            _check_json(metrics, "metrics")

        # A previous async save must be finalized (and its failure surfaced) before deciding;
        # orbax would wait for it at this point anyway.
        self.wait()
        latest = self.latest_step()
        if latest is not None and step == latest:
            log.warning("checkpoint step %d already exists in %s; not saving it again",
                        step, self.directory)
            return False
        if latest is not None and step < latest:
            raise CheckpointError(
                f"refusing to save step {step} in {self.directory}: a newer finalized checkpoint "
                f"(step {latest}) exists. Restore from it, or move it away to restart from an "
                "earlier step."
            )
        self._move_aside_unfinalized(step)

        state, impls = pack_prng_keys(state)
        meta = {"format_version": FORMAT_VERSION, "step": step, "metrics": metrics,
                "prng_keys": impls, "time": time.time()}
        args = ocp.args.Composite(**{
            STATE: ocp.args.PyTreeSave(state),
            EXTRA: ocp.args.JsonSave(extra),
            META: ocp.args.JsonSave(meta),
        })
        self._policy.pending_step = step
        try:
            saved = self._mngr.save(step, args=args, metrics=metrics, force=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"saving step {step} to {self.step_dir(step)} failed: {type(e).__name__}: {e}"
            ) from e
        if not saved:  # pragma: no cover - force=True always saves
            raise CheckpointError(f"orbax declined to save step {step} in {self.directory}")
        self._manifest_pending.append(step)
        if not self.async_save:  # orbax has finalized the step: checksum it now
            self._write_pending_manifests()
        return True

    def record_metrics(self, step: int, metrics: Mapping[str, Any],
                       extra: Mapping[str, Any] | None = None) -> None:
        """Attach ``metrics`` (and, given, a new ``extra``) to the finalized ``step``; re-apply retention.

        For a step saved before its evaluation (so that a failure or preemption during the
        evaluation cannot lose the trained state): its metrics are written into the step's
        ``meta`` (read by :meth:`metrics` / :meth:`best_step`) and, when ``best_metric`` is set,
        orbax's ``metrics`` item (read by the retention policy); then the ``keep_last`` +
        ``keep_best`` policy runs again, so a step that is no longer among the best is deleted
        as if ``step`` had been saved with these metrics. Each file is replaced atomically; a
        crash in between leaves the step restorable (its metrics may be missing, which a rerun
        of the evaluation records again).

        ``extra`` replaces the step's caller dict when the evaluation changed what it holds (a
        task that tunes thresholds or calibration on validation): the restored step then carries
        what the evaluation decided, as if it had been saved after it.
        """
        self._check_open()
        self.wait()
        step = int(step)
        problem = self._finalization_problem(step)
        if problem is not None:
            raise CheckpointError(f"cannot record metrics for step {step}: {self.step_dir(step)} {problem}")
        metrics = {str(k): _to_float(v) for k, v in metrics.items()}
        _check_json(metrics, "metrics")
        if extra is not None:
            extra = dict(extra)
            _check_json(extra, "extra")
        if jax.process_index() == 0:
            rewritten = [f"{META}/metadata"]
            if extra is not None and extra != self._read_json(step, EXTRA):
                _replace_text(self.step_dir(step) / EXTRA / "metadata", json.dumps(extra))
                rewritten.append(f"{EXTRA}/metadata")
            meta = self._read_json(step, META)
            meta["metrics"] = metrics
            _replace_text(self.step_dir(step) / META / "metadata", json.dumps(meta))
            if self.best_metric is not None:  # the file orbax reads back as CheckpointInfo.metrics
                orbax_metrics = self.step_dir(step) / "metrics"
                orbax_metrics.mkdir(exist_ok=True)
                _replace_text(orbax_metrics / "metrics", json.dumps(metrics))
            # the rewritten files get new checksums (the step's other entries stay as saved)
            integrity.update_manifest(self.step_dir(step), rewritten
                                      + (["metrics/metrics"] if self.best_metric is not None else []))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"jaxbert_ckpt_record_metrics_{step}")
        self._mngr.reload()
        self._apply_retention()

    def _apply_retention(self) -> None:
        """Delete the finalized steps the retention policy no longer preserves."""
        from orbax.checkpoint.checkpoint_manager import CheckpointInfo
        import datetime
        steps = self.all_steps()
        infos = [CheckpointInfo(step=s, time=datetime.datetime.now(tz=datetime.timezone.utc),
                                metrics=self._mngr.metrics(s)) for s in steps]
        keep = self._policy.should_preserve(infos, context=None)
        for info, preserve in zip(infos, keep):
            if not preserve:
                log.info("retention: deleting step %d from %s", info.step, self.directory)
                self._mngr.delete(info.step)
        self._mngr.reload()
    def _write_pending_manifests(self) -> None:
        """Checksums the finalized steps saved since the last call (process 0 writes; all agree).

        A collective in multi-process runs: every process learns whether process 0 succeeded.
        """
        pending, self._manifest_pending = self._manifest_pending, []
        for step in pending:
            d = self.step_dir(step)
            error = None
            if jax.process_index() == 0 and self._is_finalized(step):  # (retention may have removed it)
                try:
                    integrity.write_manifest(d, step)
                except Exception as e:  # noqa: BLE001 - e.g. disk full: the step stays, unverified
                    error = e
            if not _all_processes_ok(error is None):
                where = d / integrity.MANIFEST_NAME
                raise CheckpointError(
                    f"step {step} was saved but its checksums could not be written to {where}: "
                    + (_brief(error) if error is not None else "failed on process 0")
                ) from (_cause(error) if error is not None else None)

    def _move_aside(self, step: int, suffix: str) -> epath.Path:
        """Renames the directory of ``step`` to ``<step>.<suffix>`` (a free name); never deletes.

        A collective in multi-process runs (process 0 renames, then every process reloads orbax's
        step list, which no longer holds the step).
        """
        d = self.step_dir(step)
        aside, n = d.parent / f"{d.name}.{suffix}", 1
        while aside.exists():
            n += 1
            aside = d.parent / f"{d.name}.{suffix}-{n}"
        self._mngr.wait_until_finished()
        multi = jax.process_count() > 1
        if multi:  # every process has chosen the same free name before process 0 renames
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"jaxbert_ckpt_move_aside_{step}_{suffix}_name")
        if jax.process_index() == 0:
            d.rename(aside)
        if multi:
            multihost_utils.sync_global_devices(f"jaxbert_ckpt_move_aside_{step}_{suffix}")
        self._mngr.reload()  # drop the stale entry from orbax's step cache
        return aside

    def _move_aside_unfinalized(self, step: int) -> None:
        """An unfinalized directory at ``step`` (interrupted save) is renamed, never deleted."""
        d = self.step_dir(step)
        if not d.exists():
            return
        problem = self._finalization_problem(step)
        aside = self._move_aside(step, f"incomplete-{int(time.time())}")
        log.warning("%s %s; moved it to %s before saving step %d", d, problem, aside, step)

    # ---- restore ---------------------------------------------------------------------------

    def _read_json(self, step: int, item: str) -> dict:
        path = self.step_dir(step) / item / "metadata"
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.step_dir(step)} is incomplete: missing {path}",
                step=step, file=str(path), reason="bad-metadata") from None
        except (OSError, ValueError) as e:
            raise CheckpointCorruptError(
                f"checkpoint step {step}: cannot read {path}: {_brief(e)}",
                step=step, file=str(path), reason="bad-metadata") from _cause(e)
        if not isinstance(obj, dict):
            raise CheckpointCorruptError(
                f"checkpoint step {step}: {path} holds a JSON {type(obj).__name__}, not the saved dict",
                step=step, file=str(path), reason="bad-metadata")
        return obj

    def _state_metadata(self, step: int) -> Any:
        d = self.step_dir(step) / STATE
        if not d.is_dir():
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.step_dir(step)} is incomplete: missing the "
                f"'{STATE}' directory {d}", step=step, file=str(d), reason="missing-state")
        try:
            md = self._mngr.metadata(step).item_metadata[STATE]
        except Exception as e:  # noqa: BLE001
            raise CheckpointCorruptError(
                f"checkpoint step {step}: cannot read the array metadata in {self._file_in(step, e, d)}: "
                f"{_brief(e)}", step=step, file=self._file_in(step, e, d), reason="bad-array-metadata",
            ) from _cause(e)
        if md is None:
            raise CheckpointCorruptError(f"checkpoint step {step}: no readable array metadata in {d}",
                                         step=step, file=str(d), reason="bad-array-metadata")
        return getattr(md, "tree", md)

    def _file_in(self, step: int, e: BaseException, default: epath.Path) -> str:
        """The first path inside the step directory that the backend's error names, else ``default``."""
        m = re.search(re.escape(str(self.step_dir(step))) + r"/[^\s\"',\]]*", _chain_text(e))
        return m.group(0) if m else str(default)

    def verify(self, step: int) -> bool:
        """Checks every file of ``step`` against its ``checksums.json``.

        Returns True when verified, False when the step has no manifest (saved before checksums
        existed, or cut between orbax's finalize and the manifest: restorable, but unverified).
        Raises :class:`CheckpointCorruptError` naming the first damaged file. A collective in
        multi-process runs: each process checks its share of the files and all agree on the result.
        """
        d = self.step_dir(step)
        manifest = integrity.read_manifest(d)
        if manifest is None:
            log.warning("checkpoint step %d in %s has no %s (saved before checksums existed, or the save "
                        "was cut after orbax finalized it): restoring it unverified", step, d,
                        integrity.MANIFEST_NAME)
            return False
        problem = manifest if isinstance(manifest, integrity.IntegrityProblem) else integrity.verify_step(d, manifest)
        if problem is not None:
            raise CheckpointCorruptError(
                f"checkpoint step {step} is corrupt: {d / problem.file}: {problem.kind}: {problem.detail}",
                step=step, file=str(d / problem.file), reason=problem.kind)
        return True

    def restore(
        self,
        step: int | None = None,
        abstract_state: Any = None,
        *,
        partial: bool = False,
        allow_dtype_cast: bool = False,
    ) -> tuple[Any, dict] | None:
        """Restores ``(state, extra)`` from ``step`` (default: the latest finalized step).

        Args:
          step: the step to restore; None picks :meth:`latest_step` and returns None when the
            directory holds no finalized checkpoint.
          abstract_state: the target pytree: ``jax.ShapeDtypeStruct`` leaves with ``.sharding``
            (arrays come back with those shardings), or live arrays (their shardings are used),
            Python scalars, numpy arrays (restored as numpy). Typed-key leaves get keys back.
            Leaves without a sharding are placed on one device (replicated in multi-process
            runs). None restores the checkpoint's own tree (for inspection) with that placement.
          partial: allow the checkpoint to hold more leaves than the target (e.g. load only
            ``params`` from a full training checkpoint).
          allow_dtype_cast: restore into a target dtype different from the saved one instead
            of raising.

        Every file is checked against the step's checksums first. With ``step=None`` a latest step
        whose files are damaged is moved aside and the previous finalized step restored (one
        warning line each; see the module docstring), unless ``fallback=False``: then, as for an
        explicit ``step``, :class:`CheckpointCorruptError` names the step and the file.
        """
        self._check_open()
        options = dict(abstract_state=abstract_state, partial=partial, allow_dtype_cast=allow_dtype_cast)
        if step is not None:
            return self._restore_step(int(step), **options)
        tried: list[str] = []
        while (latest := self.latest_step()) is not None:
            try:
                restored = self._restore_step(latest, **options)
            except CheckpointCorruptError as e:
                older = [s for s in self.all_steps() if s < latest]
                if not self.fallback:
                    hint = (f"move {self.step_dir(latest)} aside to resume from step {older[-1]}" if older
                            else "there is no older finalized step")
                    raise CheckpointCorruptError(
                        f"{e}; fallback is off (checkpoint.fallback=False): {hint}",
                        step=e.step, file=e.file, reason=e.reason) from e.__cause__
                aside = self._move_aside(latest, f"corrupt-{e.reason}")
                tried.append(f"step {latest} ({e.file}: {e.reason}; moved to {aside.name})")
                log.warning("%s; moved it to %s; %s", e, aside,
                            f"falling back to step {older[-1]}" if older else "no older finalized step")
                continue
            return restored
        if tried:
            raise CheckpointError(f"no restorable checkpoint in {self.directory}: tried " + "; ".join(tried)
                                  + ". Nothing was deleted; a rerun in this workdir starts from scratch (or "
                                  "repair a moved-aside step by hand)")
        return None

    def _restore_step(self, step: int, abstract_state: Any, partial: bool, allow_dtype_cast: bool
                      ) -> tuple[Any, dict]:
        """:meth:`restore` of one step, no fallback: raises :class:`CheckpointCorruptError` for damage."""
        problem = self._finalization_problem(step)
        if problem is not None:
            available = self.all_steps()
            raise CheckpointError(
                f"cannot restore step {step}: {self.step_dir(step)} {problem}. "
                f"Finalized steps in {self.directory}: {available or 'none'}"
            )

        verified = self.verify(step)
        meta = self._read_json(step, META)
        extra = self._read_json(step, EXTRA)
        saved_impls = dict(meta.get("prng_keys") or {})
        saved_tree = self._state_metadata(step)
        saved = {
            _path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved_tree)[0]
        }

        if abstract_state is None:
            abstract_state = self._target_from_metadata(saved_tree, saved_impls)

        # Typed-key leaves of the target are restored as key data, then wrapped.
        key_impls: dict[str, str] = {}

        def to_target(path, x):
            name = _path_str(path)
            if _is_prng_key(x):
                key_impls[name] = _key_impl_name(x)
                return _key_data_target(name, x)
            if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
                sh = getattr(x, "sharding", None) or _default_sharding()
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
            return x

        target = jax.tree_util.tree_map_with_path(to_target, abstract_state)
        self._validate(step, saved, target, partial, allow_dtype_cast)
        for name, impl in key_impls.items():
            if name in saved_impls and saved_impls[name] != impl:
                raise CheckpointMismatchError(
                    f"checkpoint step {step} ({self.step_dir(step)}): PRNG key {name!r} was saved "
                    f"with impl {saved_impls[name]!r}, target asks for {impl!r}"
                )

        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        args = ocp.args.Composite(**{
            STATE: ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=partial
            ),
        })
        try:
            restored = self._mngr.restore(step, args=args)[STATE]
        except Exception as e:  # noqa: BLE001
            file = self._file_in(step, e, self.step_dir(step) / STATE)
            if verified:  # the bytes are the saved ones: not damage on disk, nothing to fall back from
                raise CheckpointError(
                    f"checkpoint step {step}: reading the arrays from {file} failed although every file "
                    f"matches its checksum: {_brief(e)}") from _cause(e)
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.step_dir(step)} could not be read (corrupt or incomplete "
                f"array data in {file}): {_brief(e)}", step=step, file=file, reason="bad-array-data",
            ) from _cause(e)
        return unpack_prng_keys(restored, key_impls), extra

    def _target_from_metadata(self, tree: Any, impls: Mapping[str, str]) -> Any:
        sharding = _default_sharding()

        def one(path, md):
            name = _path_str(path)
            shape = getattr(md, "shape", None)
            dtype = getattr(md, "dtype", None)
            if shape is None or dtype is None:
                raise CheckpointError(f"cannot build a restore target for {name!r} ({md!r})")
            if name in impls:
                k = jax.eval_shape(
                    lambda: jax.random.wrap_key_data(
                        np.zeros(shape, np.uint32), impl=impls[name]))
                return jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=sharding)
            return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=sharding)

        return jax.tree_util.tree_map_with_path(one, tree)

    def _validate(self, step, saved, target, partial, allow_dtype_cast) -> None:
        want = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}
        missing = sorted(set(want) - set(saved))
        unexpected = [] if partial else sorted(set(saved) - set(want))
        bad = []
        for name in sorted(set(want) & set(saved)):
            t, s = want[name], saved[name]
            t_shape = tuple(np.shape(t)) if not hasattr(t, "shape") else tuple(t.shape)
            s_shape = tuple(getattr(s, "shape", ()) or ())
            if t_shape != s_shape:
                bad.append(f"  {name}: checkpoint shape {s_shape}, target shape {t_shape}")
                continue
            if allow_dtype_cast or not hasattr(t, "dtype") or getattr(s, "dtype", None) is None:
                continue
            if np.dtype(t.dtype) != np.dtype(s.dtype):
                bad.append(f"  {name}: checkpoint dtype {np.dtype(s.dtype)}, target dtype "
                           f"{np.dtype(t.dtype)}")
        if not (missing or unexpected or bad):
            return
        lines = [f"checkpoint step {step} in {self.step_dir(step)} does not match the restore "
                 "target:"]
        if missing:
            lines.append(f" missing in checkpoint ({len(missing)}): " + ", ".join(missing[:20]))
        if unexpected:
            lines.append(f" unexpected in checkpoint ({len(unexpected)}; pass partial=True to "
                         "ignore): " + ", ".join(unexpected[:20]))
        if bad:
            lines.append(" shape/dtype mismatches:")
            lines.extend(bad[:20])
        raise CheckpointMismatchError("\n".join(lines))

    # ---- lifecycle -------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until an in-flight async save is finalized, then checksums it; re-raises its error.

        A collective in multi-process runs when an async save is pending (call it on every process).
        """
        try:
            self._mngr.wait_until_finished()
            self._mngr.check_for_errors()
        except Exception as e:  # noqa: BLE001
            self._manifest_pending.clear()
            raise CheckpointError(
                f"async checkpoint save in {self.directory} failed: {_brief(e)}"
            ) from _cause(e)
        self._write_pending_manifests()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._mngr.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError(f"Checkpointer for {self.directory} is closed")

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
