"""Retrieval losses for long documents at batch size 1 (LoCo / M2-BERT retrieval fine-tuning).

Long documents (thousands of tokens) leave room for one query-document example per step, so
in-batch negatives (MNRL) see almost no negatives. The LoCo paper (Saad-Falcon et al. 2024)
trains M2-BERT retrieval models with batch size 1 and an **orthogonal projection loss** (OPL,
Ranasinghe et al. 2021): pull the query and its document together, push the query and in-sample
negatives towards orthogonality (cosine 0), not towards -1::

    s = cos(q, d+)                         (same "class": the query and its positive)
    n = mean_j cos(q, d-_j)                (different: the query and each negative)
    loss = (1 - s) + gamma * |n|

``gamma`` weighs the negative term (0.5 in Ranasinghe et al.). The alternative the issue allows,
InfoNCE with the in-sample negatives as the only candidates, is
:func:`jaxbert.objectives.contrastive.mnrl_loss` on ``[B, 1 + K]`` docs (with ``B = 1`` the
in-batch candidates are exactly the row's own positive and negatives); the training config
``experiments/configs/m2_retrieval.py`` uses that one because the contrastive task runs it.

Layout as in :mod:`jaxbert.objectives.contrastive`: ``queries [B, d]``, ``docs [B, K, d]`` with
``docs[:, 0]`` the positive and ``docs[:, 1:]`` the negatives. Returns ``(loss, sums)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Sums = dict[str, jax.Array]


def _cos(a: jax.Array, b: jax.Array, eps: float = 1e-12) -> jax.Array:
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    num = jnp.sum(a * b, axis=-1)
    return num / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)


def orthogonal_projection_loss(queries: jax.Array, docs: jax.Array, *, gamma: float = 0.5,
                               weights: jax.Array | None = None) -> tuple[jax.Array, Sums]:
    """OPL over each row's own positive and negatives (module docstring). ``docs [B, K>=2, d]``."""
    if docs.ndim != 3 or docs.shape[1] < 2:
        raise ValueError(f"orthogonal_projection_loss needs docs [B, K>=2, d] (a positive and at least one "
                         f"negative per query), got shape {docs.shape}")
    if queries.shape[0] != docs.shape[0] or queries.shape[-1] != docs.shape[-1]:
        raise ValueError(f"queries {queries.shape} and docs {docs.shape} disagree")
    pos = _cos(queries, docs[:, 0])
    neg = jnp.mean(_cos(queries[:, None, :], docs[:, 1:]), axis=-1)
    per_row = (1.0 - pos) + gamma * jnp.abs(neg)
    w = jnp.ones_like(per_row) if weights is None else weights.astype(jnp.float32)
    total = jnp.sum(per_row * w)
    weight = jnp.sum(w)
    return total / jnp.maximum(weight, 1e-12), {"loss": total, "weight": weight}
