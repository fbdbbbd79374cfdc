"""Sequence classification runs BERT's last block for the [CLS] token alone.

The classifier reads only token 0 of the last layer, so ``EncoderForSequenceClassification``
asks the backbone for ``first_token_only``. Checked here: logits, the pooler input and every
gradient equal the full computation's (no dropout; with dropout the masks of the last block
have another shape, hence other draws); the compiled step really does less work (XLA's flop
count); remat and packed rows (per-query segment masks) take the same path.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert.models import build_task_model, registry
from jaxbert.models.transformer.model import Encoder

LAYERS = 3


def _config(**changes):
    cfg, backbone = registry.get("bert-tiny", num_hidden_layers=LAYERS, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, **changes)
    return cfg, backbone


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(4, 24)).astype(np.int32)
    mask = np.ones((4, 24), np.int32)
    mask[2:, 15:] = 0  # two padded rows
    types = np.zeros((4, 24), np.int32)
    types[:, 12:] = 1
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


@pytest.mark.parametrize("remat", [False, True])
def test_logits_and_gradients_equal_the_full_last_block(remat):
    cfg, backbone = _config(remat=remat)
    ids, mask, types = _batch()
    short = build_task_model(cfg, backbone, "sequence_classification", 3)
    full = build_task_model(cfg.replace(first_token_shortcut=False), backbone, "sequence_classification", 3)
    params = nn.unbox(short.init(jax.random.key(0), ids, mask, types)["params"])

    out_s = short.apply({"params": params}, ids, mask, types)
    out_f = full.apply({"params": params}, ids, mask, types)
    assert out_s["last_hidden_state"].shape == (4, 1, cfg.hidden_size)
    assert out_f["last_hidden_state"].shape == (4, 24, cfg.hidden_size)
    np.testing.assert_allclose(np.asarray(out_s["logits"]), np.asarray(out_f["logits"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out_s["last_hidden_state"][:, 0]),
                               np.asarray(out_f["last_hidden_state"][:, 0]), rtol=1e-5, atol=1e-5)

    labels = jnp.asarray([0, 1, 2, 1])

    def loss(p, model):
        logits = model.apply({"params": p}, ids, mask, types)["logits"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    g_s = jax.grad(loss)(params, short)
    g_f = jax.grad(loss)(params, full)
    flat_s = jax.tree_util.tree_flatten_with_path(g_s)[0]
    flat_f = jax.tree.leaves(g_f)
    for (path, a), b in zip(flat_s, flat_f):
        # Relative to the leaf's size; key biases have (mathematically) zero gradient, ~1e-12 here.
        scale = float(jnp.abs(b).max())
        assert float(jnp.abs(a - b).max()) <= 1e-4 * scale + 1e-9, jax.tree_util.keystr(path)
    # The last block's query projection still learns (through token 0), as in the full model.
    last_q = g_s["encoder"][f"layer_{LAYERS - 1}"]["attention"]["query"]["kernel"]
    assert float(jnp.abs(last_q).max()) > 0


def test_the_compiled_step_does_less_work():
    cfg, backbone = _config()
    ids, mask, types = _batch()
    flops = {}
    for shortcut in (True, False):
        model = build_task_model(cfg.replace(first_token_shortcut=shortcut), backbone, "sequence_classification", 2)
        params = nn.unbox(model.init(jax.random.key(0), ids, mask, types)["params"])
        grad = jax.jit(jax.grad(lambda p: model.apply({"params": p}, ids, mask, types)["logits"].sum()))
        cost = grad.lower(params).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops[shortcut] = cost["flops"]
    # One of LAYERS blocks shrinks to a single query row (its keys/values stay): well over half a
    # block's share of the work is gone.
    assert flops[True] < flops[False] * (1 - 0.5 / LAYERS), flops


def test_packed_rows_keep_the_first_query_row_of_the_segment_mask():
    cfg, _ = _config()
    model = Encoder(cfg)
    ids, mask, types = _batch()
    segments = jnp.asarray(np.repeat([[1] * 10 + [2] * 14], 4, axis=0), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(1), ids, mask, types)["params"])
    full = model.apply({"params": params}, ids, mask, types, segment_ids=segments)
    short = model.apply({"params": params}, ids, mask, types, segment_ids=segments, first_token_only=True)
    assert short.last_hidden_state.shape == (4, 1, cfg.hidden_size)
    np.testing.assert_allclose(np.asarray(short.last_hidden_state[:, 0]), np.asarray(full.last_hidden_state[:, 0]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(short.pooler_output), np.asarray(full.pooler_output), rtol=1e-5, atol=1e-6)
