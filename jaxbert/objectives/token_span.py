"""Token-level and span losses: token classification and extractive QA.

Both return ``(loss, sums)`` like :mod:`jaxbert.objectives.classification`: ``sums["loss"]``
is the weighted *sum* of per-item losses, ``sums["weight"]`` the denominator, so sums from
micro-batches, devices and eval batches add up exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

NEG_INF = -1e9


def token_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``logits [b, l, c]``, ``labels [b, l]`` (``-1`` = no target) -> mean CE over labelled tokens.

    ``weights [b]`` scales whole rows (eval padding rows have 0). ``sums`` holds ``loss``,
    ``accuracy`` (correct labelled tokens) and ``weight`` (labelled tokens).
    """
    valid = (labels >= 0).astype(jnp.float32)
    if weights is not None:
        valid = valid * weights.astype(jnp.float32)[:, None]
    safe = jnp.maximum(labels, 0)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    total = jnp.sum(valid)
    loss_sum = jnp.sum(per_token * valid)
    correct = (jnp.argmax(logits, -1) == safe).astype(jnp.float32) * valid
    return loss_sum / jnp.maximum(total, 1.0), {"loss": loss_sum, "accuracy": jnp.sum(correct), "weight": total}


def mask_padding(logits: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Padding positions of ``[b, l]`` span logits set to a large negative value."""
    return jnp.where(attention_mask > 0, logits, NEG_INF)


def span_cross_entropy(start_logits: jax.Array, end_logits: jax.Array, start_positions: jax.Array,
                       end_positions: jax.Array, weights: jax.Array | None = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Extractive QA: mean of start and end CE over positions ``[b, l]`` (as HF's BertForQuestionAnswering).

    ``sums``: ``loss``, ``accuracy`` (both start and end exactly right), ``weight`` (examples).
    """
    n = start_logits.shape[0]
    w = jnp.ones((n,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    ce_s = optax.softmax_cross_entropy_with_integer_labels(start_logits.astype(jnp.float32), start_positions)
    ce_e = optax.softmax_cross_entropy_with_integer_labels(end_logits.astype(jnp.float32), end_positions)
    per_example = 0.5 * (ce_s + ce_e)
    total = jnp.sum(w)
    right = ((jnp.argmax(start_logits, -1) == start_positions) & (jnp.argmax(end_logits, -1) == end_positions))
    loss_sum = jnp.sum(per_example * w)
    return loss_sum / jnp.maximum(total, 1.0), {"loss": loss_sum, "accuracy": jnp.sum(right.astype(jnp.float32) * w),
                                                "weight": total}
