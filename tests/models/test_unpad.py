"""Unpadded execution (``jaxbert.models.layers.unpad``): plans, gather/scatter, and equality with
padded execution to 1e-5 — long, short, unpadded (full) and empty rows, every block variant,
the MLM head on masked positions, and the gradients of an MLM loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbert.models import registry
from jaxbert.models.transformer.model import Encoder
from jaxbert.models.layers import unpad
from jaxbert.models.task_models import build_task_model

TOL = 1e-5
# long (full row, no padding), short, empty, medium
LENGTHS = [48, 5, 0, 30, 48, 11]
L = 48


def make_batch(vocab: int, lengths=LENGTHS, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (len(lengths), L)).astype(np.int32)
    mask = (np.arange(L)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids * mask, mask


def test_plan_covers_every_real_token_once():
    _, mask = make_batch(100)
    idx = unpad.plan(mask)
    b, l = mask.shape
    real = idx[idx < b * l]
    assert sorted(real.tolist()) == np.flatnonzero(mask.ravel()).tolist()
    assert idx.shape[1] == L and idx.shape[0] in (2, 3, 5, 6)  # buckets of 6 rows in quarters: 2, 3, 5, 6
    # every stream row holds whole sequences
    rows = [set((idx[r][idx[r] < b * l] // l).tolist()) for r in range(idx.shape[0])]
    for seq in range(b):
        assert sum(seq in r for r in rows) == (1 if LENGTHS[seq] else 0)
    stream = unpad.plan(mask, row_length=10**9)
    assert stream.shape[0] == 1 and (stream < b * l).sum() == sum(LENGTHS)
    assert unpad.plan(np.zeros((3, 8), np.int32)).shape == (1, 8)  # all padding: one row of sentinels
    with pytest.raises(ValueError, match="shorter than the longest"):
        unpad.plan(mask, row_length=20)


def test_bucket_sizes():
    assert [unpad.bucket_size(n, 64, 4) for n in (1, 16, 17, 33, 64)] == [16, 16, 32, 48, 64]
    with pytest.raises(ValueError):
        unpad.bucket_size(65, 64, 4)


def test_gather_scatter_round_trip():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(len(LENGTHS), L, 3)).astype(np.float32))
    _, mask = make_batch(100)
    idx = jnp.asarray(unpad.plan(mask))
    back = unpad.scatter(unpad.gather(x, idx), idx, len(LENGTHS), L)
    m = mask.astype(bool)
    assert np.array_equal(np.asarray(back)[m], np.asarray(x)[m]) and np.all(np.asarray(back)[~m] == 0)


@pytest.mark.parametrize("name", ["bert-tiny", "mosaicbert-tiny", "modernbert-tiny"])
def test_unpadded_equals_padded(name):
    cfg = registry.get(name, vocab_size=100)[0]
    model = Encoder(cfg)
    ids, mask = make_batch(cfg.vocab_size)
    params = model.init(jax.random.key(0), ids, mask)
    run = jax.jit(lambda i, m, u=None: model.apply(params, i, m, unpad_index=u).last_hidden_state)
    ref = np.asarray(run(ids, mask))
    m = mask.astype(bool)
    for index in (unpad.plan(mask), unpad.plan(mask, row_length=10**9), unpad.plan(mask, num_buckets=1)):
        out = np.asarray(run(ids, mask, jnp.asarray(index)))
        assert np.isfinite(out).all()
        assert np.abs(out[m] - ref[m]).max() < TOL, (name, index.shape)
        assert np.all(out[~m] == 0)
    # config switch without a host plan: one stream row per batch row
    out = np.asarray(Encoder(cfg.replace(unpad=True)).apply(params, ids, mask).last_hidden_state)
    assert np.abs(out[m] - ref[m]).max() < TOL


def test_mlm_loss_and_gradients_match():
    """MLM head on masked positions only; loss and every gradient equal padded vs unpadded."""
    cfg = registry.get("modernbert-tiny", vocab_size=100)[0]
    model = build_task_model(cfg, Encoder, "mlm")
    ids, mask = make_batch(cfg.vocab_size)
    rng = np.random.default_rng(1)
    positions = np.stack([np.sort(rng.choice(max(n, 1), 4)) for n in LENGTHS]).astype(np.int32)
    labels = rng.integers(5, 100, positions.shape).astype(np.int32)
    weights = (np.asarray(LENGTHS)[:, None] > 0).astype(np.float32) * np.ones_like(labels, np.float32)
    params = model.init(jax.random.key(0), ids, mask)["params"]

    def loss(p, index):
        logits = model.apply({"params": p}, ids, mask, masked_positions=positions, unpad_index=index)["logits"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return (ce * weights).sum() / weights.sum()

    grad = jax.jit(jax.value_and_grad(loss))
    l0, g0 = grad(params, None)
    l1, g1 = grad(params, jnp.asarray(unpad.plan(mask)))
    assert abs(float(l0) - float(l1)) < TOL
    diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), g0, g1))
    assert max(diffs) < TOL


def test_unpad_rejects_soft_prompts():
    from jaxbert.models.layers.extensions import Extension
    import dataclasses
    import flax.linen as nn

    class Prompt(nn.Module):
        @nn.compact
        def __call__(self, x, mask, deterministic):
            return jnp.concatenate([x[:, :1], x], 1), jnp.concatenate([mask[:, :1], mask], 1)

    @dataclasses.dataclass(frozen=True)
    class PromptExt(Extension):
        site = "embeddings"
        name = "prompt"

        def build(self, config, layer_index, name):
            return Prompt(name=name)

    cfg = registry.get("bert-tiny", unpad=True, extensions=(PromptExt(),))[0]
    ids, mask = make_batch(cfg.vocab_size)
    with pytest.raises(ValueError, match="unpadded execution"):
        Encoder(cfg).init(jax.random.key(0), ids, mask)
