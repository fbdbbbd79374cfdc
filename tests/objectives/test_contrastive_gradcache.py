"""GradCache: the chunked, activation-free backward gives the full-batch gradient.

A random 1-layer BERT (hidden 32) embeds ``[B, K, L]`` pair batches; the gradient of the MNRL
(and Matryoshka-MNRL) loss through :func:`grad_cache_embed` is compared with ``jax.grad`` of the
plain full-batch computation with dropout off (max abs difference <= 1e-5 x the largest gradient
entry, relative L2 <= 5e-6: float32 summation order only); with
dropout on, it equals the plain chunked computation with the same per-chunk rngs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from jaxbert.models import registry
from jaxbert.objectives import contrastive as C
from jaxbert.models.pooling import pool

B, K, L = 8, 3, 12


@pytest.fixture(scope="module")
def setup():
    cfg, backbone = registry.get("bert-tiny", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                 intermediate_size=64, vocab_size=100, max_position_embeddings=32)
    model = backbone(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (B, K, L)).astype(np.int32)
    mask = np.ones((B, K, L), np.int32)
    lengths = rng.integers(3, L + 1, (B, K))
    mask[np.arange(L)[None, None, :] >= lengths[..., None]] = 0
    ids = ids * mask
    inputs = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids[:, 0])["params"])

    def embed(p, x, r, deterministic=True):
        n = x["input_ids"].shape[0]
        flat_ids = x["input_ids"].reshape(n * K, L)
        flat_mask = x["attention_mask"].reshape(n * K, L)
        rngs = None if deterministic else {"dropout": r}
        h = model.apply({"params": p}, flat_ids, flat_mask, deterministic=deterministic, rngs=rngs).last_hidden_state
        return pool(h, flat_mask, "mean").reshape(n, K, -1)

    return model, params, inputs, embed


def _loss(emb):
    return C.mnrl_loss(emb[:, 0], emb[:, 1:])[0]


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _rel_l2(a, b):
    """||a - b|| / ||a|| over all leaves (float32 summation order alone gives ~1e-7)."""
    num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    den = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(a))
    return (num / den) ** 0.5


# Gradients differ from the full-batch ones only by float32 summation order: the largest
# difference is ~2e-6 per unit of the largest gradient entry (measured 1.5e-6 on gradients up to
# 3.8); relative L2 ~6e-7.
ATOL, RTOL_L2 = 1e-5, 5e-6


def _close(a, b) -> bool:
    scale = max(1.0, max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a)))
    return _max_diff(a, b) <= ATOL * scale and _rel_l2(a, b) <= RTOL_L2


@pytest.mark.parametrize("num_chunks", [4])
def test_grad_cache_equals_full_batch_gradient(setup, num_chunks):
    _, params, inputs, embed = setup
    rng = jax.random.key(1)
    full = jax.jit(jax.value_and_grad(lambda p: _loss(embed(p, inputs, rng))))
    cached = jax.jit(jax.value_and_grad(lambda p: _loss(C.grad_cache_embed(embed, p, inputs, rng, num_chunks))))
    (l_full, g_full), (l_cached, g_cached) = full(params), cached(params)
    assert abs(float(l_full) - float(l_cached)) < 1e-6
    diff = _max_diff(g_full, g_cached)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_full))
    rel = _rel_l2(g_full, g_cached)
    print(f"GradCache {num_chunks} chunks: max |grad diff| = {diff:.2e} (max |grad| {scale:.2e}), "
          f"relative L2 {rel:.2e}")
    assert diff <= ATOL * max(1.0, scale) and rel <= RTOL_L2


def test_grad_cache_matryoshka(setup):
    _, params, inputs, embed = setup
    rng = jax.random.key(1)
    loss = lambda e: C.matryoshka_loss(lambda a, b: C.mnrl_loss(a, b), (e[:, 0], e[:, 1:]), (32, 16, 8))[0]  # noqa: E731
    g_full = jax.jit(jax.grad(lambda p: loss(embed(p, inputs, rng))))(params)
    g_cached = jax.jit(jax.grad(lambda p: loss(C.grad_cache_embed(embed, p, inputs, rng, 4))))(params)
    assert _close(g_full, g_cached)


def test_grad_cache_with_dropout_replays_the_same_masks(setup):
    """With dropout, the backward re-embeds each chunk with the rng of its forward pass."""
    _, params, inputs, embed = setup
    rng = jax.random.key(3)
    drop = lambda p, x, r: embed(p, x, r, deterministic=False)  # noqa: E731

    def chunked_plain(p):  # same chunking and rngs, ordinary autodiff
        chunks = C._split_rows(inputs, 2)
        embs = [drop(p, jax.tree.map(lambda a: a[i], chunks), jax.random.fold_in(rng, i)) for i in range(2)]
        return _loss(C._merge_rows(jnp.stack(embs)))

    l_ref, g_ref = jax.jit(jax.value_and_grad(chunked_plain))(params)
    l_gc, g_gc = jax.jit(jax.value_and_grad(lambda p: _loss(C.grad_cache_embed(drop, p, inputs, rng, 2))))(params)
    assert abs(float(l_ref) - float(l_gc)) < 1e-6
    assert _close(g_ref, g_gc)
    # ... and dropout really changes the embeddings (the test would be vacuous otherwise)
    assert abs(float(l_gc) - float(_loss(embed(params, inputs, rng)))) > 1e-4


def test_grad_cache_bad_chunking(setup):
    _, params, inputs, embed = setup
    with pytest.raises(ValueError, match="cannot be split into 3 GradCache chunks"):
        C.grad_cache_embed(embed, params, inputs, jax.random.key(0), 3)
