"""The training loop: mesh, sharded state, jitted steps, evaluation, checkpoints, metrics, export.

``train_and_evaluate(config, workdir)`` is what ``python -m experiments.launch`` runs. It

1. builds the mesh and checks the global batch against the data-parallel size;
2. builds the task (model, tokenizer, data) and the optimizer from ``config.optim``;
3. creates the train state sharded from the start, or restores the latest checkpoint in
   ``workdir`` (params, optimizer state, step, RNG and the data iterator's position);
4. trains, logging to ``metrics.jsonl`` / TensorBoard / a progress bar, evaluating and saving
   on schedule (an evaluation step is saved *before* its evaluation, the metrics attached
   after); SIGTERM saves at the next step boundary (or between evaluation batches) and
   returns ``status="preempted"``; a NaN/Inf loss, grad norm, learning rate or updated
   parameter raises ``FloatingPointError`` at the step it appears, naming the last good
   checkpoint (every saved step's parameters were checked finite inside its train step);
5. checkpoints the final state, then evaluates every split (``eval_results.json``) and
   exports an HF directory (``exported.json`` records the step). A rerun does only what is
   missing; on a finished workdir it does nothing and says so. ``run(only="eval"|"export")``
   (``launch --eval_only`` / ``--export_only``) redoes one part for the latest checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import flax.linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbert.compiler_options import compiler_options
from jaxbert.tasks import TaskProtocol, get_task
from jaxbert.train import mesh as mesh_lib
from jaxbert.train import optim as optim_lib
from jaxbert.train.checkpoint import Checkpointer
from jaxbert.train.config_checks import check_best_metric, check_config
from jaxbert.train.preemption import PreemptionGuard, any_process
from jaxbert.train.metrics import MetricsWriter, Throughput
from jaxbert.train.run_config import record_run_config
from jaxbert.train.state import abstract_train_state, create_sharded_state, state_shardings
from jaxbert.train.step import PARAMS_FINITE, all_finite, finite_or_raise, jit_train_step, make_train_step
from jaxbert.train.workdir_lock import workdir_lock

log = logging.getLogger(__name__)

#: Written after the final evaluation / export of a step: ``{"step": N, ...}``.
EVAL_RESULTS, EXPORTED = "eval_results.json", "exported.json"


def _say(msg: str) -> None:
    """A one-line status message on stderr from process 0."""
    if jax.process_index() == 0:
        print(f"[jaxbert] {msg}", file=sys.stderr, flush=True)


def _config_to_dict(config: Any) -> dict:
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _total_steps(config: Any, num_train: int) -> int:
    if config.get("num_train_steps"):
        return int(config.num_train_steps)
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {num_train} training examples")
    return max(1, int(round(config.num_epochs * steps_per_epoch)))


class Trainer:
    """Holds everything a run needs; ``run()`` trains to ``total_steps`` or until preempted."""

    def __init__(self, config: Any, workdir: str | os.PathLike):
        check_config(config)  # every numeric value in range, before anything is built or written
        self.config = config
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mesh = mesh_lib.make_mesh(tuple(tuple(a) for a in config.mesh))
        self.rules = tuple((name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in config.logical_axis_rules)
        mesh_lib.check_batch_divisible(config.batch_size, self.mesh, self.rules, "batch_size")
        mesh_lib.check_batch_divisible(config.eval_batch_size, self.mesh, self.rules, "eval_batch_size")
        if config.batch_size % config.grad_accum_steps:
            raise ValueError(f"batch_size={config.batch_size} is not divisible by "
                             f"grad_accum_steps={config.grad_accum_steps}")
        micro = config.batch_size // config.grad_accum_steps
        mesh_lib.check_batch_divisible(micro, self.mesh, self.rules, "batch_size // grad_accum_steps")

        self.task: TaskProtocol = get_task(config.task)(config)
        self.task.check_records()  # every split's records, before step 1
        check_best_metric(config, self.task.eval_metric_names(), self.task.known_splits(), say=_say)
        self.total_steps = _total_steps(config, len(self.task.train_source))
        optim_cfg = optim_lib.resolve_optim_config(config.optim)
        optim_cfg.total_steps = self.total_steps
        params_abstract = nn.unbox(jax.eval_shape(lambda r: self.task.model.init(r, **self.task.sample_input),
                                                  jax.random.key(0))["params"])
        # PEFT (config.peft.method != 'none'; see jaxbert/peft): the task wrapped its model (Task.attach_peft);
        # the method labels the leaves (frozen base), may wrap the optimizer (HFT) and register step hooks (DSEE).
        self.peft = self.task.peft
        labels = self.peft.method.labels(params_abstract) if self.peft is not None else None
        self.tx, self.optim_info = optim_lib.make_optimizer(optim_cfg, params_abstract, labels=labels)
        if self.peft is not None:
            self.tx = self.peft.method.wrap_optimizer(
                self.tx, total_steps=self.total_steps, seed=config.seed,
                steps_per_epoch=max(1, len(self.task.train_source) // config.batch_size))
        self.schedule = self.optim_info["schedule"]
        self.shardings = state_shardings(self.task.model, self.tx, self.mesh, self.rules, self.task.sample_input)
        if self.shardings.fallbacks:
            _say(f"replicated instead of sharded (dimension not divisible by the mesh axis): "
                 f"{[f'{p} dim {d} ({n})' for p, d, n, _, _ in self.shardings.fallbacks]}")
        self.train_step = jit_train_step(make_train_step(self.task.loss_fn, self.tx, config.grad_accum_steps,
                                                         schedule=self.schedule),
                                         self.shardings.state, self._batch_shardings, self.mesh)
        self.peft_hooks = {} if self.peft is None else {  # step -> params transform, same shardings
            k: jax.jit(f, out_shardings=self.shardings.params)
            for k, f in self.peft.method.step_hooks(self.total_steps).items()}
        self.eval_step = jax.jit(self.task.predict_fn, in_shardings=(self.shardings.params, self._batch_shardings),
                                 out_shardings=NamedSharding(self.mesh, P()),
                                 compiler_options=compiler_options(self.mesh))

    # Batch dicts hold [B, L] and [B] arrays; a callable prefix is not allowed, so the batch
    # sharding is given per key when a step is traced (jit accepts None = infer from argument).
    @property
    def _batch_shardings(self):
        return None

    def _params_transform(self):
        k = int(self.config.get("reinit_top_layers", 0) or 0)
        if not k:
            return None
        model, sample = self.task.model, self.task.sample_input

        def transform(params, rng):
            fresh = nn.unbox(model.init(jax.random.fold_in(rng, 1), **sample)["params"])
            return optim_lib.reinit_top_layers(params, fresh, k)
        return transform

    def _new_state(self):
        return create_sharded_state(self.task.model, self.tx, self.shardings, self.config.seed,
                                    self.task.sample_input, params=self.task.pretrained_params,
                                    params_transform=self._params_transform())

    def evaluate(self, params, split: str, stop: Callable[[], bool] | None = None) -> dict[str, float]:
        """Metrics of ``params`` on ``split`` (every example once; pad rows have weight 0).

        ``stop`` is polled between batches (every process, collectively); when it returns True
        the evaluation ends with ``_Preempted`` (the run saves nothing more and exits).
        """
        outputs, sums = [], None
        for i, batch in enumerate(self.task.eval_batches(split, self.config.eval_batch_size)):
            if i and stop is not None and stop():
                raise _Preempted(split)
            gbatch = mesh_lib.shard_batch(batch, self.mesh, self.rules)
            out, s = self.eval_step(params, gbatch)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                out = multihost_utils.process_allgather(out, tiled=True)
            outputs.append(jax.device_get(out))
            s = jax.device_get(s)
            sums = s if sums is None else {k: sums[k] + s[k] for k in sums}
        merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
        return self.task.eval_metrics(merged, {k: float(v) for k, v in sums.items()})

    def run(self, only: str | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` (resuming from the latest checkpoint), evaluate, export.

        The final state is checkpointed before the final evaluation and export, so a failure or
        preemption there loses no training; a rerun does what is missing (see :meth:`_finish`),
        and a workdir that is finished (``eval_results.json`` and ``exported.json`` of its last
        step) is left as it is. ``only="eval"`` / ``"export"`` redoes just that part for the
        latest checkpoint (``python -m experiments.launch --workdir W --eval_only``).
        """
        if only not in (None, "eval", "export"):
            raise ValueError(f"only must be None, 'eval' or 'export', got {only!r}")
        # One run per workdir (jaxbert.train.workdir_lock), taken before anything is written there.
        with workdir_lock(self.workdir, say=_say):
            return self._run(only)

    def _run(self, only: str | None) -> dict[str, Any]:
        cfg = self.config
        record_run_config(self.workdir, _config_to_dict(cfg), allow_change=bool(cfg.get("allow_config_change")))
        best_metric = cfg.checkpoint.best_metric or None
        data_iter = self.task.train_iterator(cfg.batch_size, cfg.seed)
        with Checkpointer(self.workdir, keep_last=cfg.checkpoint.keep_last,
                          keep_best=cfg.checkpoint.keep_best if best_metric else None,
                          best_metric=best_metric, best_mode=cfg.checkpoint.best_mode,
                          fallback=cfg.checkpoint.fallback) as ckpt, \
                PreemptionGuard() as guard, jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            if only is None:
                finished = self._already_finished(ckpt)
                if finished is not None:
                    return finished
            restored = ckpt.restore(abstract_state=abstract_train_state(
                self.task.model, self.tx, self.shardings, self.task.sample_input))
            if restored is not None:
                state, extra = restored
                data_iter.set_state(extra["data"])
                # e.g. the label set must match the checkpoint's
                self.task.load_extra_state({k: v for k, v in extra.items() if k != "data"})
                _say(f"{'resumed' if only is None else 'restored'} from {self.workdir / 'checkpoints'} "
                     f"at step {int(state.step)}")
            elif only is not None:
                raise FileNotFoundError(f"--{only}_only: no finalized checkpoint in {self.workdir / 'checkpoints'} "
                                        f"to {'evaluate' if only == 'eval' else 'export'}")
            else:
                state = self._new_state()
            step = int(jax.device_get(state.step))
            writer = MetricsWriter(self.workdir, self.total_steps, resume_step=step,
                                   tensorboard=cfg.get("tensorboard", True),
                                   progress=cfg.get("progress", True) and only is None)
            extra_fn = lambda: {"data": data_iter.get_state(), **self.task.extra_state()}
            stop = lambda: any_process(guard.preempted)  # collective: every process calls it at the same points
            result = {"status": "running", "start_step": step}
            throughput, window = Throughput(), []
            try:
                if only is None and self._periodic_eval_pending(ckpt, step):
                    # The state of an evaluation step was saved, its evaluation did not finish.
                    if self._evaluate_step(state.params, writer, ckpt, step, stop, extra_fn) is None:
                        return self._preempted(result, step, "during the evaluation")
                while only is None and step < self.total_steps:
                    batch = next(data_iter)
                    throughput.add(int(batch["input_ids"].shape[0]) * jax.process_count(),
                                   int(batch["attention_mask"].sum()) * jax.process_count())
                    state, m = self.train_step(state, mesh_lib.shard_batch(batch, self.mesh, self.rules))
                    step += 1
                    hooked = step in self.peft_hooks
                    if hooked:
                        state = state.replace(params=self.peft_hooks[step](state.params))
                        _say(f"peft {self.peft.method.name}: step hook ran after step {step}")
                    m = {k: float(v) for k, v in jax.device_get(m).items()}
                    params_finite = m.pop(PARAMS_FINITE) == 1.0
                    if hooked:  # the hook changed the params the next checkpoint holds: check them too
                        params_finite = params_finite and bool(jax.device_get(self._all_finite(state.params)))
                    w = max(m.pop("weight"), 1.0)
                    row = {k: (v / w if k in ("loss", "accuracy") else v) for k, v in m.items()}
                    finite_or_raise(row, step, self._last_good_note(ckpt), params_finite=params_finite)
                    window.append(row)
                    if cfg.get("debug_sigterm_at_step") == step:  # for tests: a real signal mid-run
                        os.kill(os.getpid(), signal.SIGTERM)
                    if step % cfg.log_every == 0 or step == self.total_steps:
                        logged = {k: float(np.mean([r[k] for r in window])) for k in window[0]}
                        logged["learning_rate"] = row["learning_rate"]  # this step's (from the step), not a mean
                        logged.update(throughput.rates())
                        writer.write(step, "train", logged)
                        writer.progress(step, {"loss": logged["loss"]})
                        window = []
                    evaluate = bool(cfg.eval_every) and step % cfg.eval_every == 0 and step < self.total_steps
                    periodic = cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < self.total_steps
                    if periodic or evaluate:  # saved before its evaluation: a failure there cannot lose it
                        ckpt.save(step, state, extra_fn(), force=True)
                    if evaluate and self._evaluate_step(state.params, writer, ckpt, step, stop, extra_fn) is None:
                        return self._preempted(result, step, "during the evaluation")
                    if stop():
                        ckpt.save(step, state, extra_fn(), force=True)
                        ckpt.wait()
                        return self._preempted(result, step)
                return self._finish(state, step, ckpt, writer, extra_fn, stop, result, only)
            finally:
                writer.close()

    # ---- after training: final checkpoint, evaluation, export ---------------------------------

    def _finish(self, state, step: int, ckpt: Checkpointer, writer: MetricsWriter, extra_fn, stop,
                result: dict[str, Any], only: str | None) -> dict[str, Any]:
        """Checkpoint the final state, then evaluate and export what is not yet done for ``step``.

        Order: (1) save ``step`` if it is not the latest checkpoint (whatever
        ``checkpoint.every`` says); (2) the final evaluation, checking for preemption between
        batches, its metrics attached to the checkpoint afterwards (best-K ranking), then
        ``eval_results.json``; (3) the export, then ``exported.json``. A SIGTERM at any point
        returns ``status="preempted"`` with everything before it kept; a rerun continues from
        the first part not recorded. A failure in (2)/(3) says how to redo only that part.
        """
        cfg = self.config
        if ckpt.latest_step() != step:
            ckpt.save(step, state, extra_fn(), force=True)
        ckpt.wait()
        self.final_state = state
        if stop():
            return self._preempted(result, step)
        evaluated, exported = self._final_parts_done(step)
        if only == "eval" or (only is None and not evaluated):
            final = self._final_part("evaluation", "--eval_only", step, ckpt, lambda: self._evaluate_step(
                state.params, writer, ckpt, step, stop, extra_fn))
            if final is None:
                return self._preempted(result, step, "during the final evaluation")
            eval_results = self._write_eval_results(step, final)
        else:
            eval_results = self._read_eval_results(step)
        result.update(eval=eval_results)
        if only == "export" or (only is None and cfg.get("export_hf", True) and not exported):
            if stop():
                return self._preempted(result, step, "before the export")
            result.update(self._final_part("export", "--export_only", step, ckpt,
                                           lambda: self._export(state.params, step)))
        result.update(status="done", step=step)
        return result

    def _evaluate_step(self, params, writer: MetricsWriter, ckpt: Checkpointer, step: int, stop, extra_fn
                       ) -> dict[str, float] | None:
        """Evaluate every split at ``step`` (its checkpoint already saved) and attach the metrics to it.

        The step's ``extra`` is written again with the task's state after the evaluation (what it
        tuned on validation, e.g. multi-label thresholds), so a restore gets what the export used.

        Returns None when preempted between batches (no metrics recorded; the rows written so
        far are dropped by the rerun, which evaluates ``step`` again).
        """
        writer.drop_rows(step, self.task.eval_sources)  # a partial or earlier set of this step's rows
        try:
            metrics = self._eval_all(params, writer, step, stop)
        except _Preempted:
            return None
        ckpt.record_metrics(step, metrics, extra=extra_fn())
        return metrics

    def _final_part(self, what: str, flag: str, step: int, ckpt: Checkpointer, fn):
        """``fn()``; on an error, say (and note on the exception) how to redo only this part."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - re-raised with the hint
            hint = (f"the final {what} of step {step} failed ({type(e).__name__}); the trained state is saved "
                    f"in {ckpt.step_dir(step)}. Fix the cause and redo only the {what}: "
                    f"python -m experiments.launch --workdir {self.workdir} {flag} [--config.KEY=VALUE ...]")
            _say(hint)
            e.add_note(hint)
            raise

    def _export(self, params, step: int) -> dict[str, Any]:
        """Adapter and/or HF export of ``params`` (process 0), then ``exported.json`` for ``step``."""
        out: dict[str, Any] = {}
        if jax.process_index() == 0:
            if self.peft is not None:  # adapter-only checkpoint (small), then a merged export if possible
                from jaxbert.peft.checkpoint import save_adapter
                info = save_adapter(self.workdir / "adapter", params, self.peft.method)
                out.update(adapter_dir=str(info.path), adapter_bytes=info.size_bytes)
            if self.peft is None or self.peft.method.mergeable:
                out["export_dir"] = str(self.task.export(params, self.workdir / "export"))
            else:
                _say(f"peft method {self.peft.method.name!r} adds modules to the model: no plain HF export, "
                     f"adapter saved to {self.workdir / 'adapter'}")
            _write_json_atomic(self.workdir / EXPORTED, {"step": step, **out})
        return out

    def _write_eval_results(self, step: int, final: dict[str, float]) -> dict[str, dict[str, float]]:
        eval_results = {split: {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith(split + "/")}
                        for split in self.task.eval_sources}
        if jax.process_index() == 0:
            _write_json_atomic(self.workdir / EVAL_RESULTS, {"step": step, **eval_results})
        return eval_results

    def _read_eval_results(self, step: int) -> dict[str, dict[str, float]]:
        saved = _read_json(self.workdir / EVAL_RESULTS) or {}
        return {k: v for k, v in saved.items() if k != "step"} if saved.get("step") == step else {}

    def _final_parts_done(self, step: int) -> tuple[bool, bool]:
        """(final evaluation recorded, export recorded) for ``step``; process 0 decides for all."""
        evaluated = (_read_json(self.workdir / EVAL_RESULTS) or {}).get("step") == step
        exported = (_read_json(self.workdir / EXPORTED) or {}).get("step") == step
        return _agree_with_process_0(evaluated, exported)

    def _already_finished(self, ckpt: Checkpointer) -> dict[str, Any] | None:
        """The summary of a finished workdir (nothing to do), or None when something is left to do."""
        latest = ckpt.latest_step()
        if latest is None or latest < self.total_steps:
            return None
        evaluated, exported = self._final_parts_done(latest)
        export_wanted = self.config.get("export_hf", True)
        if not evaluated or (export_wanted and not exported):
            return None
        parts = f"{EVAL_RESULTS}" + (f" and {EXPORTED}" if export_wanted else "")
        _say(f"{self.workdir} is finished: step {latest} of {self.total_steps} is checkpointed, evaluated and "
             f"{'exported' if export_wanted else 'needs no export (export_hf=False)'} ({parts}); nothing to do. "
             f"To redo a part: python -m experiments.launch --workdir {self.workdir} --eval_only (or --export_only)")
        exported_info = {k: v for k, v in (_read_json(self.workdir / EXPORTED) or {}).items() if k != "step"}
        return {"status": "done", "already_finished": True, "start_step": latest, "step": latest,
                "eval": self._read_eval_results(latest), **(exported_info if export_wanted else {})}

    def _periodic_eval_pending(self, ckpt: Checkpointer, step: int) -> bool:
        """The restored ``step`` is an ``eval_every`` step whose evaluation has no recorded metrics."""
        every = self.config.eval_every
        return bool(every) and 0 < step < self.total_steps and step % every == 0 and ckpt.metrics(step) is None

    def _preempted(self, result: dict[str, Any], step: int, where: str = "") -> dict[str, Any]:
        result.update(status="preempted", step=step)
        _say(f"preempted{' ' + where if where else ''}: step {step} is saved in {self.workdir / 'checkpoints'}, "
             f"exiting; rerun the same command to continue")
        return result

    def _last_good_note(self, ckpt: Checkpointer) -> str:
        """Which checkpoint a non-finite step leaves: every saved step had finite params and metrics."""
        latest = ckpt.latest_step()
        where = self.workdir / "checkpoints"
        if latest is None:
            return f"no checkpoint saved yet in {where}"
        return f"last good checkpoint: step {latest} in {where} (its params are finite)"

    @functools.cached_property
    def _all_finite(self):
        return jax.jit(all_finite)

    def _eval_all(self, params, writer: MetricsWriter, step: int, stop=None) -> dict[str, float]:
        out = {}
        for split in self.task.eval_sources:
            metrics = self.evaluate(params, split, stop=stop)
            writer.write(step, split, metrics)
            out.update({f"{split}/{k}": v for k, v in metrics.items()})
        return out


class _Preempted(Exception):
    """Raised inside an evaluation when the preemption flag is seen between batches."""


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a torn write counts as missing)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _agree_with_process_0(*flags: bool) -> tuple[bool, ...]:
    """Process 0's ``flags`` on every process (decisions read from files must be the same everywhere)."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils
    got = multihost_utils.broadcast_one_to_all(np.asarray([bool(f) for f in flags], np.int32))
    return tuple(bool(v) for v in np.asarray(got))


def train_and_evaluate(config: Any, workdir: str | os.PathLike, only: str | None = None) -> dict[str, Any]:
    """Run ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns a summary dict.

    ``only="eval"`` / ``"export"``: redo just the evaluation / export of the latest checkpoint.
    """
    return Trainer(config, workdir).run(only=only)
