"""Classification and regression losses with example weights.

Every loss returns ``(loss, sums)``: ``loss`` is the weighted mean used for gradients and
``sums`` holds weighted metric numerators plus ``"weight"`` (the denominator), so metrics from
several micro-batches, devices or eval batches add up exactly before division.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _weights(batch: dict, n: int) -> jax.Array:
    w = batch.get("weights")
    return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None,
                          label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``logits [b, c]`` (float32), ``labels [b]`` int -> mean CE, with accuracy sums."""
    n, c = logits.shape
    w = jnp.ones((n,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, c)
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
    total = jnp.sum(w)
    loss = jnp.sum(per_example * w) / jnp.maximum(total, 1.0)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return loss, {"loss": jnp.sum(per_example * w), "accuracy": jnp.sum(correct * w), "weight": total}


def sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Multi-label: ``logits [b, c]``, ``labels [b, c]`` in {0, 1} -> mean over labels and examples."""
    n = logits.shape[0]
    w = jnp.ones((n,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    per_example = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32)).mean(-1)
    total = jnp.sum(w)
    return jnp.sum(per_example * w) / jnp.maximum(total, 1.0), {"loss": jnp.sum(per_example * w), "weight": total}


def mean_squared_error(predictions: jax.Array, targets: jax.Array, weights: jax.Array | None = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Regression: ``predictions [b, 1] or [b]``, ``targets [b]``."""
    p = predictions.reshape(predictions.shape[0], -1)[:, 0].astype(jnp.float32)
    n = p.shape[0]
    w = jnp.ones((n,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    err = (p - targets.astype(jnp.float32)) ** 2
    total = jnp.sum(w)
    return jnp.sum(err * w) / jnp.maximum(total, 1.0), {"loss": jnp.sum(err * w), "weight": total}
