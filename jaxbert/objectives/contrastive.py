"""Sentence-embedding losses: in-batch negatives (MNRL / InfoNCE), NT-Xent, CoSENT, cosine MSE,
SBERT softmax over pair features, DSE distillation, Matryoshka, plus GradCache and cross-device
negatives.

Every loss is a pure function of embeddings (and targets) returning ``(loss, sums)`` like the
other objectives: ``loss`` is what gradients are taken of, ``sums["loss"]`` the weighted *sum*
whose ratio to ``sums["weight"]`` is ``loss`` (the training step differentiates ``sums["loss"]``
and divides by the total weight, see :mod:`jaxbert.train.step`). Batch-level losses (CoSENT) set
``sums["loss"] = loss * n`` and ``weight = n``.

Defaults follow sentence-transformers (``losses/``): MNRL ``scale=20`` (temperature 0.05) over
cosine similarity with directions ``("query_to_doc",)`` and ``partition_mode="joint"``; CoSENT
``scale=20``; SoftmaxLoss features ``[u, v, |u - v|]``. Mirror-BERT's NT-Xent uses
``tau=0.04`` (``scale=25``) for sentences, 0.2 for words.

Layout of a contrastive batch: ``queries [B, d]`` and ``docs [B, K, d]`` where ``docs[:, 0]``
is each query's positive and ``docs[:, 1:]`` its hard negatives. The candidates of every query
are all ``K * B`` docs of the batch (ordered column-major as sentence-transformers does:
positives first, then the first negatives, ...).

**Global negatives.** Under ``jax.jit`` with shardings (the Trainer), a loss over the global
``[B, d]`` arrays already uses every device's rows as negatives: XLA inserts the all-gather.
:func:`gathered_mnrl_loss` does the same explicitly with ``shard_map`` (each device scores its
local queries against the gathered candidates, ``[B_local, K * B]`` instead of ``[B, K * B]``
per device), and returns the same loss as the single-device computation.

**GradCache** (Gao et al. 2021, sentence-transformers' ``CachedMultipleNegativesRankingLoss``):
:func:`grad_cache_embed` embeds the batch in chunks without keeping activations, the loss
gradient w.r.t. the embeddings is taken on the full batch, and the backward pass re-embeds
chunk by chunk and back-propagates that gradient, so memory is bounded by one chunk while the
gradient is the full-batch gradient (tested: equal up to float32 summation order,
relative L2 difference < 1e-6).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxbert.models.embedder import PAIR_FEATURES, pair_features  # noqa: F401  (the classifier input)

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")

Sums = dict[str, jax.Array]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis (``torch.nn.functional.normalize``), float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def cos_sim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity matrix ``[n, m]`` of ``a [n, d]`` and ``b [m, d]``."""
    return l2_normalize(a) @ l2_normalize(b).T


def pairwise_cos_sim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise cosine similarity ``[n]`` of ``a [n, d]`` and ``b [n, d]``."""
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def _mean_sums(per_example: jax.Array, weights: jax.Array | None) -> tuple[jax.Array, Sums]:
    w = jnp.ones(per_example.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    total = jnp.sum(w)
    s = jnp.sum(per_example * w)
    return s / jnp.maximum(total, 1.0), {"loss": s, "weight": total}


def _batch_sums(loss: jax.Array, n: int) -> tuple[jax.Array, Sums]:
    return loss, {"loss": loss * n, "weight": jnp.asarray(n, jnp.float32)}


def check_mnrl_options(scale: float, directions: Sequence[str], partition_mode: str,
                       hardness_mode: str | None = None, hardness_strength: float = 0.0) -> tuple[str, ...]:
    """Validate MNRL options (the messages name the valid values); returns ``directions`` as a tuple."""
    if hardness_mode not in HARDNESS_MODES or hardness_strength < 0:
        raise ValueError(f"hardness_mode must be one of {HARDNESS_MODES} and hardness_strength >= 0, got "
                         f"{hardness_mode!r}, {hardness_strength}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    directions = (directions,) if isinstance(directions, str) else tuple(directions)
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise ValueError(f"invalid MNRL directions {list(directions)}; valid: {list(DIRECTIONS)}")
    if "query_to_doc" not in directions:
        raise ValueError("MNRL directions must include 'query_to_doc' (it holds the positive pair)")
    if partition_mode not in PARTITION_MODES:
        raise ValueError(f"partition_mode must be one of {PARTITION_MODES}, got {partition_mode!r}")
    if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
        raise ValueError("partition_mode='per_direction' cannot be combined with 'query_to_query' or "
                         "'doc_to_doc' (their candidates never include the positive); use 'joint'")
    return directions


def _check_docs(queries: jax.Array, docs: jax.Array) -> jax.Array:
    if docs.ndim == 2:
        docs = docs[:, None]
    if queries.ndim != 2 or docs.ndim != 3 or docs.shape[0] != queries.shape[0] or docs.shape[2] != queries.shape[1]:
        raise ValueError(f"MNRL expects queries [B, d] and docs [B, K, d] (or [B, d]); got "
                         f"{tuple(queries.shape)} and {tuple(docs.shape)}")
    return docs


def _mnrl_rows(local_q, local_pos, q_all, docs_all, offset, *, scale, directions, partition_mode,
               hardness_mode=None, hardness_strength=0.0):
    """Per-row MNRL loss ``[b]`` of local queries ``[b, d]`` (global rows ``offset + i``).

    ``q_all [B, d]`` all queries; ``docs_all [B, K, d]`` all docs (column 0 = positives).
    """
    b = local_q.shape[0]
    big_b, k = docs_all.shape[0], docs_all.shape[1]
    cands = jnp.swapaxes(docs_all, 0, 1).reshape(k * big_b, -1)  # column-major, as sentence-transformers
    rows = jnp.arange(b)
    cols = offset + rows  # each local row's global index
    own = jax.nn.one_hot(cols, big_b, dtype=jnp.bool_)  # [b, B]
    sims = {"query_to_doc": cos_sim(local_q, cands)}
    if "query_to_query" in directions:
        sims["query_to_query"] = jnp.where(own, -jnp.inf, cos_sim(local_q, q_all))
    if "doc_to_query" in directions:
        sims["doc_to_query"] = cos_sim(local_pos, q_all)
    if "doc_to_doc" in directions:
        sims["doc_to_doc"] = jnp.where(jnp.tile(own, (1, k)), -jnp.inf, cos_sim(local_pos, cands))
    penalty = None
    if hardness_mode is not None and hardness_strength > 0:
        # Hardness weighting (Lan et al. 2025; EmbeddingGemma): + strength * stop_grad(cos) on the
        # chosen negatives' logits, after the temperature scaling (sentence-transformers' rule).
        own_docs = jnp.tile(own, (1, k))  # [b, K*B]: the row's own positive and hard negatives
        first_block = jnp.arange(k * big_b) < big_b
        if hardness_mode == "in_batch_negatives":
            keep = ~own_docs
        elif hardness_mode == "hard_negatives":
            keep = own_docs & ~first_block
        else:  # all_negatives: everything but the own positive
            keep = ~(own_docs & first_block)
        penalty = jnp.where(keep, hardness_strength * jax.lax.stop_gradient(sims["query_to_doc"]), 0.0)
    sims = {name: s * scale for name, s in sims.items()}
    if penalty is not None:
        sims["query_to_doc"] = sims["query_to_doc"] + penalty
    positive = sims["query_to_doc"][rows, cols]
    if partition_mode == "joint":
        log_z = jax.nn.logsumexp(jnp.concatenate(list(sims.values()), axis=1), axis=1)
    else:
        log_z = sum(jax.nn.logsumexp(s, axis=1) for s in sims.values()) / len(sims)
    return log_z - positive


def mnrl_loss(queries: jax.Array, docs: jax.Array, *, scale: float = 20.0,
              directions: Sequence[str] = ("query_to_doc",), partition_mode: str = "joint",
              weights: jax.Array | None = None, hardness_mode: str | None = None,
              hardness_strength: float = 0.0) -> tuple[jax.Array, Sums]:
    """Multiple-negatives ranking loss (InfoNCE over cosine similarity, in-batch negatives).

    ``queries [B, d]``, ``docs [B, K, d]`` (``docs[:, 0]`` the positives, the rest hard
    negatives; ``[B, d]`` means no hard negatives). Same value as sentence-transformers'
    ``MultipleNegativesRankingLoss(scale, directions=..., partition_mode=...)``; the symmetric
    loss is ``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``.
    ``hardness_mode`` (``"in_batch_negatives"`` / ``"hard_negatives"`` / ``"all_negatives"``) with
    ``hardness_strength > 0`` adds ``strength * stop_grad(cos)`` to those negatives' logits.
    """
    directions = check_mnrl_options(scale, directions, partition_mode, hardness_mode, hardness_strength)
    docs = _check_docs(queries, docs)
    per_row = _mnrl_rows(queries, docs[:, 0], queries, docs, 0, scale=scale, directions=directions,
                         partition_mode=partition_mode, hardness_mode=hardness_mode,
                         hardness_strength=hardness_strength)
    return _mean_sums(per_row, weights)


def _batch_axes(mesh: Any, axis_names: str | Sequence[str] | None) -> tuple[str, ...]:
    if axis_names is None:
        axis_names = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
    axes = (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)
    missing = [a for a in axes if a not in mesh.shape]
    if missing:
        raise ValueError(f"mesh axes {missing} not in mesh {dict(mesh.shape)}")
    return axes


def gathered_mnrl_loss(queries: jax.Array, docs: jax.Array, *, mesh: Any = None,
                       axis_names: str | Sequence[str] | None = None, scale: float = 20.0,
                       directions: Sequence[str] = ("query_to_doc",), partition_mode: str = "joint",
                       hardness_mode: str | None = None, hardness_strength: float = 0.0) -> tuple[jax.Array, Sums]:
    """:func:`mnrl_loss` with negatives all-gathered over the batch axes of ``mesh`` (``shard_map``).

    ``queries [B, d]`` / ``docs [B, K, d]`` are global arrays split over ``axis_names`` (default:
    the mesh's ``data`` and ``fsdp`` axes, as ``DEFAULT_RULES`` shard ``batch``). Each device
    scores its ``B / n`` queries against all ``K * B`` gathered candidates; the per-device sums are
    ``psum``-ed, so the result equals the single-device loss on the same global batch, and its
    gradient flows back to the devices that own each row (the all-gather transposes to a
    reduce-scatter). ``mesh`` defaults to the mesh set with ``jax.set_mesh``.
    """
    from jax.sharding import PartitionSpec as P

    directions = check_mnrl_options(scale, directions, partition_mode, hardness_mode, hardness_strength)
    docs = _check_docs(queries, docs)
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or not mesh.shape:
            raise ValueError("gathered_mnrl_loss needs a mesh (pass mesh= or call inside jax.set_mesh)")
    axes = _batch_axes(mesh, axis_names)
    n_dev = 1
    for a in axes:
        n_dev *= mesh.shape[a]
    if queries.shape[0] % n_dev:
        raise ValueError(f"batch of {queries.shape[0]} rows cannot be split over {n_dev} devices (axes {axes})")
    spec = P(axes)

    def local(q, d):
        q_all = jax.lax.all_gather(q, axes, tiled=True)
        d_all = jax.lax.all_gather(d, axes, tiled=True)
        offset = jax.lax.axis_index(axes) * q.shape[0]
        per_row = _mnrl_rows(q, d[:, 0], q_all, d_all, offset, scale=scale, directions=directions,
                             partition_mode=partition_mode, hardness_mode=hardness_mode,
                             hardness_strength=hardness_strength)
        return jax.lax.psum(jnp.sum(per_row), axes)

    total = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=P())(queries, docs)
    weight = jnp.float32(queries.shape[0])
    return total / weight, {"loss": total, "weight": weight}


def ntxent_loss(z1: jax.Array, z2: jax.Array, *, scale: float = 25.0,
                weights: jax.Array | None = None) -> tuple[jax.Array, Sums]:
    """NT-Xent (SimCLR; Mirror-BERT with ``tau = 1 / scale = 0.04``) over two views ``[B, d]``.

    Each of the ``2B`` embeddings has its other view as positive and the ``2B - 2`` embeddings
    of other examples as negatives (itself excluded), cosine similarity times ``scale``; the loss
    is the mean over the ``2B`` anchors (pytorch-metric-learning's ``NTXentLoss`` with labels
    ``[0..B-1, 0..B-1]``, as Mirror-BERT uses it). ``weights [B]`` weight both views of a row.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"ntxent_loss expects two [B, d] views of equal shape, got {z1.shape} and {z2.shape}")
    b = z1.shape[0]
    z = jnp.concatenate([z1, z2], axis=0)
    sim = cos_sim(z, z) * scale
    idx = jnp.arange(2 * b)
    partner = (idx + b) % (2 * b)
    sim = jnp.where(jnp.eye(2 * b, dtype=bool), -jnp.inf, sim)
    per = jax.nn.logsumexp(sim, axis=1) - sim[idx, partner]
    per_row = (per[:b] + per[b:]) / 2.0  # mean of the two anchors of a row
    return _mean_sums(per_row, weights)


def cosent_loss(u: jax.Array, v: jax.Array, scores: jax.Array, *, scale: float = 20.0
                ) -> tuple[jax.Array, Sums]:
    """CoSENT (Su 2022): ``log(1 + sum_{s_ij > s_kl} exp(scale * (cos_kl - cos_ij)))`` over the batch.

    ``u, v [B, d]``, ``scores [B]`` gold similarities (any scale; only their order matters).
    A batch-level loss (sentence-transformers' ``CoSENTLoss``).
    """
    if u.shape != v.shape or u.ndim != 2 or scores.shape != (u.shape[0],):
        raise ValueError(f"cosent_loss expects u, v [B, d] and scores [B]; got {u.shape}, {v.shape}, {scores.shape}")
    cos = pairwise_cos_sim(u, v) * scale
    labels = scores.astype(jnp.float32)
    # diff[i, j] = cos[j] - cos[i], counted where pair i should score higher than pair j.
    diff = cos[None, :] - cos[:, None]
    higher = labels[:, None] > labels[None, :]
    terms = jnp.where(higher, diff, -jnp.inf).reshape(-1)
    loss = jax.nn.logsumexp(jnp.concatenate([jnp.zeros((1,), jnp.float32), terms]))
    return _batch_sums(loss, u.shape[0])


def cosine_similarity_loss(u: jax.Array, v: jax.Array, scores: jax.Array, weights: jax.Array | None = None
                           ) -> tuple[jax.Array, Sums]:
    """MSE between ``cos(u, v)`` and gold ``scores`` (in the cosine's range, e.g. 0-1)."""
    err = (pairwise_cos_sim(u, v) - scores.astype(jnp.float32)) ** 2
    return _mean_sums(err, weights)


def softmax_pair_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
                      ) -> tuple[jax.Array, Sums]:
    """SBERT ``SoftmaxLoss``: cross-entropy of a classifier over :func:`pair_features` (NLI-style)."""
    per = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    loss, sums = _mean_sums(per, weights)
    w = jnp.ones(per.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    sums["accuracy"] = jnp.sum((jnp.argmax(logits, -1) == labels).astype(jnp.float32) * w)
    return loss, sums


def dse_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array | None = None, *,
             alpha: float = 1.0, weights: jax.Array | None = None) -> tuple[jax.Array, Sums]:
    """Distilled Sentence Embedding (Barkan et al. 2020): ``(1 - alpha) * CE(labels) + alpha * MSE``.

    The MSE is summed over the logit dimension and averaged over pairs (the reference
    ``DSETrainer``); ``labels`` may be None when ``alpha == 1`` (pure distillation).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"DSE alpha must be in [0, 1], got {alpha}")
    s = student_logits.astype(jnp.float32).reshape(student_logits.shape[0], -1)
    t = teacher_logits.astype(jnp.float32).reshape(s.shape)
    per = alpha * jnp.sum((s - t) ** 2, axis=-1)
    if alpha < 1.0:
        if labels is None:
            raise ValueError("dse_loss with alpha < 1 needs labels for the task loss")
        per = per + (1.0 - alpha) * optax.softmax_cross_entropy_with_integer_labels(s, labels)
    return _mean_sums(per, weights)


def truncate_embeddings(x: jax.Array, dim: int) -> jax.Array:
    """First ``dim`` coordinates of the last axis, L2-normalised (sentence-transformers' ``shrink``)."""
    if dim > x.shape[-1] or dim < 1:
        raise ValueError(f"Matryoshka dimension {dim} must be in [1, {x.shape[-1]}] (the embedding size)")
    return l2_normalize(x[..., :dim])


def matryoshka_loss(loss_fn: Callable[..., tuple[jax.Array, Sums]], embeddings: Sequence[jax.Array],
                    dims: Sequence[int], weights: Sequence[float] | None = None, **kwargs: Any
                    ) -> tuple[jax.Array, Sums]:
    """``sum_i weights[i] * loss_fn(*[truncate(e, dims[i]) for e in embeddings], **kwargs)``.

    Matryoshka representation learning (Kusupati et al. 2022; sentence-transformers'
    ``MatryoshkaLoss``): the same loss on the first ``d`` coordinates for every ``d`` in ``dims``
    (weights default to 1). ``sums["loss"]`` is the same weighted sum of the per-dim sums (all
    per-dim losses share one ``weight``), so ``sums["loss"] / sums["weight"] == loss``.
    """
    dims = [int(d) for d in dims]
    if not dims:
        raise ValueError("matryoshka_loss needs at least one dimension")
    weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dims):
        raise ValueError(f"{len(weights)} matryoshka weights for {len(dims)} dims")
    total, sums = 0.0, None
    for d, w in zip(dims, weights):
        loss, s = loss_fn(*[truncate_embeddings(e, d) for e in embeddings], **kwargs)
        total = total + w * loss
        s = {k: (w * v if k == "loss" else v) for k, v in s.items()}
        sums = s if sums is None else {k: (sums[k] + s[k] if k == "loss" else sums[k]) for k in sums}
    return total, sums


# ----------------------------------------------------------------------------- GradCache


def _split_rows(tree: Any, num_chunks: int) -> Any:
    """``[N, ...] -> [C, N/C, ...]``, chunk ``c`` = rows ``c, c + C, c + 2C, ...``.

    The strided split keeps each device's rows local when ``N`` is sharded over devices (every
    chunk has rows on every data-parallel shard), as the train step's micro-batching does.
    """
    def split(x):
        n = x.shape[0]
        if n % num_chunks:
            raise ValueError(f"batch of {n} rows cannot be split into {num_chunks} GradCache chunks")
        return jnp.swapaxes(x.reshape((n // num_chunks, num_chunks) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, tree)


def _merge_rows(x: jax.Array) -> jax.Array:
    """Inverse of :func:`_split_rows` for one array ``[C, N/C, ...] -> [N, ...]``."""
    c, m = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape((c * m,) + x.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def grad_cache_embed(embed_fn: Callable, params: Any, inputs: Any, rng: jax.Array, num_chunks: int) -> jax.Array:
    """``embed_fn(params, inputs, rng)`` computed in ``num_chunks`` chunks, with a GradCache backward.

    ``embed_fn(params, chunk_inputs, chunk_rng) -> [n, ...]`` embeds a chunk of rows (``inputs``
    is a pytree of ``[N, ...]`` arrays; chunk ``c`` gets rows ``c::num_chunks`` and the rng
    ``fold_in(rng, c)``). Forward: the chunks are embedded one after another (``lax.map``) and
    nothing but the embeddings is kept. Backward: given the loss gradient w.r.t. all embeddings,
    each chunk is re-embedded under ``jax.vjp`` (same rng, so the same dropout masks) and its
    parameter gradient accumulated, so peak memory is one chunk's activations. The gradient is
    the full-batch gradient of the loss (exactly so when ``embed_fn`` is deterministic).
    """
    return _grad_cache_forward(embed_fn, params, inputs, rng, num_chunks)


def _grad_cache_forward(embed_fn, params, inputs, rng, num_chunks):
    chunks = _split_rows(inputs, num_chunks)
    embs = jax.lax.map(lambda xs: embed_fn(params, xs[1], jax.random.fold_in(rng, xs[0])),
                       (jnp.arange(num_chunks), chunks))
    return _merge_rows(embs)


def _grad_cache_fwd(embed_fn, params, inputs, rng, num_chunks):
    return _grad_cache_forward(embed_fn, params, inputs, rng, num_chunks), (params, inputs, rng)


def _grad_cache_bwd(embed_fn, num_chunks, residuals, g):
    params, inputs, rng = residuals
    chunks = _split_rows(inputs, num_chunks)
    g_chunks = _split_rows(g, num_chunks)

    def body(acc, xs):
        i, chunk, g_chunk = xs
        _, vjp = jax.vjp(lambda p: embed_fn(p, chunk, jax.random.fold_in(rng, i)), params)
        (gp,) = vjp(g_chunk)
        return jax.tree.map(jnp.add, acc, gp), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(body, zeros, (jnp.arange(num_chunks), chunks, g_chunks))
    return grads, None, None


grad_cache_embed.defvjp(_grad_cache_fwd, _grad_cache_bwd)
