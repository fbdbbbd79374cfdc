"""The hand-written LayerNorm equals flax's, in value and gradient, float32 and bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from jaxbert.models.layers.norms import LayerNorm, make_norm


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("shape", [(4, 7, 384), (3, 33)])
def test_layer_norm_matches_flax(shape, use_bias):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32) * 3 + 1.5)
    g = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    ours = LayerNorm(epsilon=1e-12, use_bias=use_bias)
    ref = nn.LayerNorm(epsilon=1e-12, use_bias=use_bias)
    params = nn.unbox(ours.init(jax.random.key(0), x))
    # non-trivial scale and bias, shared by both modules (same parameter tree)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape).astype(np.float32)), params)
    assert jax.tree.structure(params) == jax.tree.structure(ref.init(jax.random.key(0), x))

    def loss(module):
        return lambda p, x: jnp.sum(module.apply(p, x) * g)

    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=2e-5)
    ours_grads = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    ref_grads = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=5e-4, rtol=1e-4)


def test_layer_norm_bf16_keeps_float32_statistics():
    rng = np.random.default_rng(1)
    x32 = jnp.asarray(rng.normal(size=(2, 5, 64)).astype(np.float32) * 100 + 1000)  # large mean
    x = x32.astype(jnp.bfloat16)
    ours = make_norm("layernorm", 1e-12, jnp.bfloat16, jnp.float32, "ln")
    params = nn.unbox(ours.init(jax.random.key(0), x))
    y = ours.apply(params, x)
    assert y.dtype == jnp.bfloat16
    ref = nn.LayerNorm(epsilon=1e-12, dtype=jnp.float32).apply(params, x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.02)
    # statistics in float32: the normalised rows have mean ~0 and variance ~1 despite the offset
    yf = np.asarray(y, np.float32)
    assert np.abs(yf.mean(-1)).max() < 0.02 and np.abs(yf.var(-1) - 1).max() < 0.03


def test_low_precision_layer_norm_stays_flax():
    assert isinstance(make_norm("layernorm", 1e-5, jnp.bfloat16, jnp.float32, "ln", low_precision=True),
                      nn.LayerNorm)
