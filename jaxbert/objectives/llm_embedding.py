"""Contrastive objectives for LLM embedders: InfoNCE with hard negatives, focal-style reweighting
(KaLM-Embedding-V2) and online hard-negative mixing.

InfoNCE (:func:`info_nce`): query ``i`` scores every candidate with cosine similarity / ``temperature``;
candidates are the positives of all queries in the batch (in-batch negatives), the hard negatives
of all queries (flattened), and optional per-query extra negatives (e.g. synthetic ones from
:func:`mix_hard_negatives`). The loss of query ``i`` is ``-log p_i`` with ``p_i`` the softmax
probability of its own positive.

**Across devices.** Under ``jax.jit`` with the batch sharded over the ``data``/``fsdp`` mesh axes,
the score matrix ``q @ d.T`` is computed over the *global* batch (XLA inserts the all-gather of the
embeddings), so in-batch negatives span all devices with no explicit collective; the result is
the single-device loss of the same global batch (tested on 8 simulated devices).

**Focal-style reweighting** (KaLM-Embedding-V2, Zhao et al. 2025, arXiv 2506.20923, training
objective section): per-example losses are weighted by ``w_i = (1 - p_i)^gamma`` (detached), so
examples the model already ranks confidently contribute less; ``gamma = 0`` is plain InfoNCE.

**Online hard-negative mixing** (:func:`mix_hard_negatives`): synthetic negatives built in
embedding space from each query's hardest negatives, in the form of MoCHi (Kalantidis et al.
2020, "Hard Negative Mixing for Contrastive Learning", §4) which KaLM-Embedding-V2 adopts for its
online mixing: ``h = normalize(a * n_i + (1 - a) * n_j)`` with ``n_i, n_j`` drawn from the
``top_k`` hardest negatives and ``a ~ U(0, 1)``, and optionally query-mixed negatives
``h' = normalize(b * q + (1 - b) * n_j)`` with ``b ~ U(0, max_query_mix)``, ``max_query_mix < 0.5``
so the synthetic point stays closer to the negative. Synthetic negatives are detached (no
gradient flows through them, as in MoCHi).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def info_nce(q: jax.Array, pos: jax.Array, hard_negatives: jax.Array | None = None, *,
             temperature: float = 0.05, extra_negatives: jax.Array | None = None,
             in_batch: bool = True) -> tuple[jax.Array, jax.Array]:
    """Per-example InfoNCE losses and positive probabilities.

    ``q [b, e]``, ``pos [b, e]``, ``hard_negatives [b, k, e]`` (shared as candidates by all queries),
    ``extra_negatives [b, m, e]`` (scored only for their own query). ``in_batch=False`` keeps only
    each query's own positive and negatives. Returns ``(losses [b], p_pos [b])`` float32.
    """
    qn, pn = normalize(q), normalize(pos)
    b = q.shape[0]
    if in_batch:
        cols = [qn @ pn.T]  # [b, b], positive of query i at column i
        target = jnp.arange(b)
    else:
        cols = [jnp.sum(qn * pn, -1, keepdims=True)]
        target = jnp.zeros((b,), jnp.int32)
    if hard_negatives is not None:
        hn = normalize(hard_negatives)
        if in_batch:
            cols.append(qn @ hn.reshape(-1, hn.shape[-1]).T)  # [b, b*k]
        else:
            cols.append(jnp.einsum("be,bke->bk", qn, hn))
    if extra_negatives is not None:
        cols.append(jnp.einsum("be,bme->bm", qn, normalize(extra_negatives)))
    logits = jnp.concatenate(cols, axis=1) / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.take_along_axis(logp, target[:, None], axis=1)[:, 0]
    return -lp, jnp.exp(lp)


def focal_weights(p_pos: jax.Array, gamma: float) -> jax.Array:
    """``(1 - p)^gamma``, detached (``stop_gradient``). ``gamma = 0`` gives ones."""
    return jax.lax.stop_gradient(jnp.power(jnp.clip(1.0 - p_pos, 0.0, 1.0), gamma))


def contrastive_loss(q: jax.Array, pos: jax.Array, hard_negatives: jax.Array | None = None, *,
                     temperature: float = 0.05, focal_gamma: float = 0.0,
                     extra_negatives: jax.Array | None = None, in_batch: bool = True
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean (focal-weighted when ``focal_gamma > 0``) InfoNCE. Returns ``(loss, metrics)``.

    Weighted: ``sum_i w_i * L_i / b`` with ``w_i = (1 - p_i)^gamma`` detached (the paper's form:
    the weights scale each example's loss, they are not renormalised).
    """
    losses, p = info_nce(q, pos, hard_negatives, temperature=temperature, extra_negatives=extra_negatives,
                         in_batch=in_batch)
    w = focal_weights(p, focal_gamma) if focal_gamma else jnp.ones_like(losses)
    loss = jnp.mean(w * losses)
    return loss, {"contrastive_loss": loss, "infonce": jnp.mean(losses), "p_pos": jnp.mean(p),
                  "focal_weight": jnp.mean(w)}


def mix_hard_negatives(rng: jax.Array, q: jax.Array, negatives: jax.Array, *, num_synthetic: int,
                       top_k: int, num_query_mixed: int = 0, max_query_mix: float = 0.5) -> jax.Array:
    """Synthetic hard negatives per query (see the module docstring). Returns unit-norm, detached
    ``[b, num_synthetic + num_query_mixed, e]`` float32.

    ``q [b, e]``; ``negatives [b, n, e]`` the candidate negatives of each query (its hard negatives,
    or the other queries' positives). The ``top_k`` most similar to the query are the pool.
    """
    if not 1 <= top_k <= negatives.shape[1]:
        raise ValueError(f"top_k={top_k} must be in [1, {negatives.shape[1]}] (number of negatives)")
    if not 0.0 < max_query_mix < 0.5 + 1e-9:
        raise ValueError(f"max_query_mix={max_query_mix} must be in (0, 0.5]")
    qn, nn_ = jax.lax.stop_gradient(normalize(q)), jax.lax.stop_gradient(normalize(negatives))
    scores = jnp.einsum("be,bne->bn", qn, nn_)
    _, idx = jax.lax.top_k(scores, top_k)  # [b, top_k]
    pool = jnp.take_along_axis(nn_, idx[..., None], axis=1)  # [b, top_k, e]
    b = q.shape[0]
    k1, k2, k3, k4, k5 = jax.random.split(rng, 5)
    out = []
    if num_synthetic:
        i = jax.random.randint(k1, (b, num_synthetic), 0, top_k)
        j = jax.random.randint(k2, (b, num_synthetic), 0, top_k)
        a = jax.random.uniform(k3, (b, num_synthetic, 1))
        ni = jnp.take_along_axis(pool, i[..., None], axis=1)
        nj = jnp.take_along_axis(pool, j[..., None], axis=1)
        out.append(normalize(a * ni + (1 - a) * nj))
    if num_query_mixed:
        j = jax.random.randint(k4, (b, num_query_mixed), 0, top_k)
        beta = jax.random.uniform(k5, (b, num_query_mixed, 1), maxval=max_query_mix)
        nj = jnp.take_along_axis(pool, j[..., None], axis=1)
        out.append(normalize(beta * qn[:, None, :] + (1 - beta) * nj))
    if not out:
        raise ValueError("num_synthetic + num_query_mixed must be >= 1")
    return jax.lax.stop_gradient(jnp.concatenate(out, axis=1))
