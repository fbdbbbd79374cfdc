"""The training loop: mesh, sharded state, jitted steps, evaluation, checkpoints, metrics, export.

``train_and_evaluate(config, workdir)`` is what ``python -m experiments.launch`` runs. It

1. builds the mesh and checks the global batch against the data-parallel size;
2. builds the task (model, tokenizer, data) and the optimizer from ``config.optim``;
3. creates the train state sharded from the start, or restores the latest checkpoint in
   ``workdir`` (params, optimizer state, step, RNG and the data iterator's position);
4. trains, logging to ``metrics.jsonl`` / TensorBoard / a progress bar, evaluating and saving
   on schedule; SIGTERM saves at the next step boundary and returns; a NaN/Inf loss raises
   ``FloatingPointError`` naming the step and metric, leaving the last checkpoint untouched;
5. evaluates every split, writes ``eval_results.json`` and exports an HF directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbert.compiler_options import compiler_options
from jaxbert.tasks import TaskProtocol, get_task
from jaxbert.train import mesh as mesh_lib
from jaxbert.train import optim as optim_lib
from jaxbert.train.checkpoint import Checkpointer
from jaxbert.train.preemption import PreemptionGuard, any_process
from jaxbert.train.metrics import MetricsWriter, Throughput
from jaxbert.train.state import abstract_train_state, create_sharded_state, state_shardings
from jaxbert.train.step import finite_or_raise, jit_train_step, make_train_step

log = logging.getLogger(__name__)


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
        self.train_step = jit_train_step(make_train_step(self.task.loss_fn, self.tx, config.grad_accum_steps),
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

    def evaluate(self, params, split: str) -> dict[str, float]:
        """Metrics of ``params`` on ``split`` (every example once; pad rows have weight 0)."""
        outputs, sums = [], None
        for batch in self.task.eval_batches(split, self.config.eval_batch_size):
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

    def run(self) -> dict[str, Any]:
        cfg = self.config
        if jax.process_index() == 0:
            _write_json_atomic(self.workdir / "config.json", _config_to_dict(cfg))
        best_metric = cfg.checkpoint.best_metric or None
        data_iter = self.task.train_iterator(cfg.batch_size, cfg.seed)
        with Checkpointer(self.workdir, keep_last=cfg.checkpoint.keep_last,
                          keep_best=cfg.checkpoint.keep_best if best_metric else None,
                          best_metric=best_metric, best_mode=cfg.checkpoint.best_mode,
                          fallback=cfg.checkpoint.fallback) as ckpt, \
                PreemptionGuard() as guard, jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            restored = ckpt.restore(abstract_state=abstract_train_state(
                self.task.model, self.tx, self.shardings, self.task.sample_input))
            if restored is not None:
                state, extra = restored
                data_iter.set_state(extra["data"])
                # e.g. the label set must match the checkpoint's
                self.task.load_extra_state({k: v for k, v in extra.items() if k != "data"})
                _say(f"resumed from {self.workdir / 'checkpoints'} at step {int(state.step)}")
            else:
                state = self._new_state()
            step = int(jax.device_get(state.step))
            writer = MetricsWriter(self.workdir, self.total_steps, resume_step=step,
                                   tensorboard=cfg.get("tensorboard", True), progress=cfg.get("progress", True))
            extra_fn = lambda: {"data": data_iter.get_state(), **self.task.extra_state()}
            result = {"status": "running", "start_step": step}
            throughput, window = Throughput(), []
            try:
                while step < self.total_steps:
                    batch = next(data_iter)
                    throughput.add(int(batch["input_ids"].shape[0]) * jax.process_count(),
                                   int(batch["attention_mask"].sum()) * jax.process_count())
                    state, m = self.train_step(state, mesh_lib.shard_batch(batch, self.mesh, self.rules))
                    step += 1
                    if step in self.peft_hooks:
                        state = state.replace(params=self.peft_hooks[step](state.params))
                        _say(f"peft {self.peft.method.name}: step hook ran after step {step}")
                    m = {k: float(v) for k, v in jax.device_get(m).items()}
                    w = max(m.pop("weight"), 1.0)
                    row = {k: (v / w if k in ("loss", "accuracy") else v) for k, v in m.items()}
                    finite_or_raise(row, step, f"last good checkpoint: step {ckpt.latest_step()} in "
                                               f"{self.workdir / 'checkpoints'}")
                    window.append(row)
                    if cfg.get("debug_sigterm_at_step") == step:  # for tests: a real signal mid-run
                        os.kill(os.getpid(), signal.SIGTERM)
                    if step % cfg.log_every == 0 or step == self.total_steps:
                        logged = {k: float(np.mean([r[k] for r in window])) for k in window[0]}
                        logged["learning_rate"] = float(self.schedule(step - 1))
                        logged.update(throughput.rates())
                        writer.write(step, "train", logged)
                        writer.progress(step, {"loss": logged["loss"]})
                        window = []
                    eval_metrics = None
                    if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                        eval_metrics = self._eval_all(state.params, writer, step)
                    # The last step is saved after the final evaluation, with its metrics.
                    periodic = cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < self.total_steps
                    if periodic or eval_metrics:
                        ckpt.save(step, state, extra_fn(), metrics=eval_metrics, force=True)
                    if any_process(guard.preempted):
                        ckpt.save(step, state, extra_fn(), force=True)
                        ckpt.wait()
                        result.update(status="preempted", step=step)
                        _say(f"preempted: saved step {step} to {self.workdir / 'checkpoints'}, exiting")
                        return result
                final = self._eval_all(state.params, writer, step)
                ckpt.save(step, state, extra_fn(), metrics=final, force=True)
                ckpt.wait()
            finally:
                writer.close()
            eval_results = {split: {k: v for k, v in final.items() if k.startswith(split + "/")}
                            for split in self.task.eval_sources}
            eval_results = {split: {k.split("/", 1)[1]: v for k, v in d.items()} for split, d in eval_results.items()}
            if jax.process_index() == 0:
                _write_json_atomic(self.workdir / "eval_results.json", {"step": step, **eval_results})
            if cfg.get("export_hf", True) and jax.process_index() == 0:
                if self.peft is not None:  # adapter-only checkpoint (small), then a merged export if possible
                    from jaxbert.peft.checkpoint import save_adapter
                    info = save_adapter(self.workdir / "adapter", state.params, self.peft.method)
                    result.update(adapter_dir=str(info.path), adapter_bytes=info.size_bytes)
                if self.peft is None or self.peft.method.mergeable:
                    export_dir = self.task.export(state.params, self.workdir / "export")
                    result["export_dir"] = str(export_dir)
                else:
                    _say(f"peft method {self.peft.method.name!r} adds modules to the model: no plain HF export, "
                         f"adapter saved to {self.workdir / 'adapter'}")
            result.update(status="done", step=step, eval=eval_results)
            self.final_state = state
            return result

    def _eval_all(self, params, writer: MetricsWriter, step: int) -> dict[str, float]:
        out = {}
        for split in self.task.eval_sources:
            metrics = self.evaluate(params, split)
            writer.write(step, split, metrics)
            out.update({f"{split}/{k}": v for k, v in metrics.items()})
        return out


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
    """Run ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns a summary dict."""
    return Trainer(config, workdir).run()
