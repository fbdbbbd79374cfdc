"""Jitted train and eval steps with gradient accumulation, shardings and buffer donation.

A *loss function* has the signature ``loss_fn(params, batch, rng, deterministic) -> (loss, sums)``
where ``sums`` holds weighted metric numerators and ``"weight"`` (see
:mod:`jaxbert.objectives.classification`), and ``sums["loss"]`` is the weighted *sum* of
per-example losses. Gradients are taken of ``sums["loss"]`` per micro-batch, accumulated with
``lax.scan`` and divided by the total weight once, so the update equals the full-batch
weighted-mean gradient for any number of micro-batches.

Every step also returns ``params_finite`` (1.0 when every floating leaf of the *updated*
params is finite, else 0.0: one fused reduction over the new params inside the step) and,
when a schedule is given, the ``learning_rate`` the step used. The loop fetches the metrics
each step anyway, so checking them adds no device-to-host sync (:func:`finite_or_raise`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbert.compiler_options import compiler_options
from jaxbert.train.state import TrainState

LossFn = Callable[[Any, dict, jax.Array, bool], tuple[jax.Array, dict[str, jax.Array]]]

#: Metric key of the all-finite flag of the updated params (1.0 / 0.0); not a logged metric.
PARAMS_FINITE = "params_finite"


def all_finite(tree: Any) -> jax.Array:
    """``bool[]``: every floating-point leaf of ``tree`` is free of NaN and Inf.

    One ``isfinite``-and-reduce per leaf, combined into a scalar; inside a jitted step XLA fuses
    each reduction with the computation that produced the leaf where it can. Integer leaves
    (counts, ids) are finite by construction and skipped.
    """
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _split_micro(batch: dict, num_micro: int) -> dict:
    """``[B, ...] -> [A, B/A, ...]`` taking rows ``a, a+A, a+2A, ...`` for micro-batch ``a``.

    The strided split keeps each device's local rows local: every micro-batch has rows on every
    data-parallel shard, so no data moves between devices.
    """
    def split(x):
        b = x.shape[0]
        if b % num_micro:
            raise ValueError(f"batch of {b} rows cannot be split into {num_micro} micro-batches")
        return jnp.swapaxes(x.reshape((b // num_micro, num_micro) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, grad_accum_steps: int = 1,
                    schedule: optax.Schedule | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Build ``step(state, batch) -> (state, metrics)`` (not yet jitted; see :func:`jit_train_step`).

    ``metrics`` holds the summed ``sums`` over the global batch plus ``grad_norm``, the
    ``params_finite`` flag of the updated params (:data:`PARAMS_FINITE`) and, with
    ``schedule``, ``learning_rate = schedule(state.step)`` (the value this step's update used,
    so a NaN/Inf schedule value shows at the step it appears); the caller divides the sums by
    ``metrics["weight"]``. Masks that change during training (e.g. HFT's frozen half)
    belong in the optimizer state, so changing them is data, not a recompile.
    """
    grad_fn = jax.grad(lambda p, b, r: (lambda l, s: (s["loss"], s))(*loss_fn(p, b, r, False)), has_aux=True)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_rng = jax.random.fold_in(state.key, state.step)
        if grad_accum_steps == 1:
            grads, sums = grad_fn(state.params, batch, step_rng)
        else:
            micro = _split_micro(batch, grad_accum_steps)
            zeros = jax.tree.map(jnp.zeros_like, state.params)

            def body(carry, xs):
                g_acc, s_acc = carry
                i, mb = xs
                g, s = grad_fn(state.params, mb, jax.random.fold_in(step_rng, i))
                g_acc = jax.tree.map(jnp.add, g_acc, g)
                s_acc = s if s_acc is None else jax.tree.map(jnp.add, s_acc, s)
                return (g_acc, s_acc), None

            # First micro-batch outside the scan fixes the structure of the metric sums.
            g0, s0 = grad_fn(state.params, jax.tree.map(lambda x: x[0], micro), jax.random.fold_in(step_rng, 0))
            rest = jax.tree.map(lambda x: x[1:], micro)
            (grads, sums), _ = jax.lax.scan(body, (jax.tree.map(jnp.add, zeros, g0), s0),
                                            (jnp.arange(1, grad_accum_steps), rest))
        total = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / total, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(sums)
        metrics["grad_norm"] = optax.global_norm(grads)
        # The checkpoint of this step will hold `params`: check them, not only the loss (which was
        # computed from the params before the update). Adam's second moment overflows only where
        # a squared gradient does, and then grad_norm is not finite either.
        metrics[PARAMS_FINITE] = all_finite(params).astype(jnp.float32)
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step


def jit_train_step(step: Callable, state_shardings: Any, batch_sharding: Any, mesh) -> Callable:
    """``jax.jit`` with explicit in/out shardings; the incoming state's buffers are donated.

    On an all-CPU mesh the step is compiled with the dots on Eigen (see
    :mod:`jaxbert.compiler_options`; ``JAXBERT_CPU_DOTS=xla`` keeps XLA's default).
    """
    replicated = NamedSharding(mesh, P())
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,),
                   compiler_options=compiler_options(mesh))


def finite_or_raise(metrics: dict[str, Any], step: int, checkpoint_note: str = "",
                    params_finite: bool = True) -> None:
    """Stop the run on a NaN/Inf metric or non-finite updated params, naming the step and what went bad.

    ``params_finite`` is the step's :data:`PARAMS_FINITE` flag (the loop pops it from the
    metrics); ``checkpoint_note`` is appended (e.g. which checkpoint is the last good one).
    """
    import math
    bad = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isfinite(v))
    if bad or not params_finite:
        what = ", ".join(bad + ([] if params_finite else ["params"]))
        values = [f"{k}={metrics[k]}" for k in bad] + ([] if params_finite else
                                                       ["a leaf of the updated params is NaN/Inf"])
        raise FloatingPointError(f"non-finite {what} at step {step} ({', '.join(values)}); training stopped"
                                 + (f"; {checkpoint_note}" if checkpoint_note else ""))
