"""Masked-language-model losses over gathered prediction slots.

Labels use :data:`jaxbert.data.masking.IGNORE` (-100) for "no prediction"; only real slots count.
Like every loss here, each function returns ``(mean_loss, sums)`` where ``sums`` holds the
weighted numerators and ``"weight"`` (number of predictions), so sums from several
micro-batches, devices or eval batches add up before the one division.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE = -100


def masked_lm_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``logits [..., V]`` (float32), ``labels [...]`` int (IGNORE = skip) -> mean CE over real labels.

    ``sums``: ``loss`` (summed CE), ``accuracy`` (correct top-1 count), ``weight`` (count).
    """
    w = (labels != IGNORE).astype(jnp.float32)
    safe = jnp.where(labels == IGNORE, 0, labels).astype(jnp.int32)
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        v = logits.shape[-1]
        onehot = optax.smooth_labels(jax.nn.one_hot(safe, v), label_smoothing)
        ce = optax.softmax_cross_entropy(logits, onehot)
    else:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    total = jnp.sum(w)
    loss_sum = jnp.sum(ce * w)
    correct = jnp.sum((jnp.argmax(logits, -1) == safe).astype(jnp.float32) * w)
    return loss_sum / jnp.maximum(total, 1.0), {"loss": loss_sum, "accuracy": correct, "weight": total}


def pairwise_hinge_loss(pos_score: jax.Array, neg_score: jax.Array, margin: float = 1.0
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``max(0, margin - s+ + s-)`` averaged over pairs; ``accuracy`` counts ``s+ > s-``."""
    per = jnp.maximum(0.0, margin - pos_score.astype(jnp.float32) + neg_score.astype(jnp.float32))
    n = jnp.asarray(per.size, jnp.float32)
    return jnp.mean(per), {"loss": jnp.sum(per), "accuracy": jnp.sum((pos_score > neg_score).astype(jnp.float32)),
                           "weight": n}
