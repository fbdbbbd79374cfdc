"""ALiBi and RoPE against direct formulas; sliding-window masks (``jaxbert.models.layers.positions``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert.models import registry
from jaxbert.models.transformer.model import Encoder
from jaxbert.models.layers import positions as P


@pytest.mark.parametrize("heads", [1, 4, 8, 12, 16, 6])
def test_alibi_slopes_match_paper_formula(heads):
    """Power of two n: slope_h = 2^(-8 (h+1) / n). Otherwise the closest power of two's slopes,
    then every other slope of the next power of two (Press et al.'s reference code)."""
    def pow2(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    if math.log2(heads).is_integer():
        want = pow2(heads)
    else:
        c = 2 ** math.floor(math.log2(heads))
        want = pow2(c) + pow2(2 * c)[0::2][: heads - c]
    np.testing.assert_allclose(P.alibi_slopes(heads), want, rtol=1e-6)
    assert P.alibi_slopes(12)[8] == pytest.approx(2 ** -0.5)  # MosaicBERT-base's 9th head


def test_alibi_bias_values_direct():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 50, (2, 7)).astype(np.int32)
    slopes = P.alibi_slopes(4)
    bias = np.asarray(P.alibi_bias(slopes, P.relative_distance(jnp.asarray(pos))))
    assert bias.shape == (2, 4, 7, 7)
    for b in range(2):
        for h in range(4):
            for i in range(7):
                for j in range(7):
                    assert bias[b, h, i, j] == pytest.approx(-slopes[h] * abs(int(pos[b, i]) - int(pos[b, j])))
    assert np.all(bias[:, :, np.arange(7), np.arange(7)] == 0)  # symmetric: no self penalty


@pytest.mark.parametrize("theta", [10000.0, 160000.0])
def test_rope_matches_complex_rotation(theta):
    """Rotate-half RoPE == multiplying (x_i + i x_{i+d/2}) by exp(i pos theta^(-2i/d))."""
    rng = np.random.default_rng(1)
    b, l, h, d = 2, 9, 3, 16
    x = rng.normal(size=(b, l, h, d)).astype(np.float32)
    pos = rng.integers(0, 300, (b, l))
    cos, sin = P.rope_angles(jnp.asarray(pos), d, theta)
    out = np.asarray(P.apply_rope(jnp.asarray(x), cos, sin))
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    z = (x[..., : d // 2] + 1j * x[..., d // 2:]).astype(np.complex128)
    z = z * np.exp(1j * pos[:, :, None, None] * inv[None, None, None, :])
    want = np.concatenate([z.real, z.imag], axis=-1)
    np.testing.assert_allclose(out, want, atol=2e-4, rtol=1e-4)


def test_rope_scores_depend_on_relative_position_only():
    rng = np.random.default_rng(2)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 8)).astype(np.float32)) for _ in range(2))
    def score(pq, pk):
        rq = P.apply_rope(q, *P.rope_angles(jnp.array([[pq]]), 8, 10000.0))
        rk = P.apply_rope(k, *P.rope_angles(jnp.array([[pk]]), 8, 10000.0))
        return float(jnp.sum(rq * rk))
    assert score(3, 10) == pytest.approx(score(103, 110), abs=1e-4)
    assert score(3, 10) != pytest.approx(score(3, 11), abs=1e-3)


def test_rope_odd_head_dim_is_an_error():
    with pytest.raises(ValueError, match="even head dimension"):
        P.rope_frequencies(7, 10000.0)


def test_window_mask_is_inclusive_half_window():
    pos = jnp.arange(10)[None]
    m = np.asarray(P.window_mask(P.relative_distance(pos), 2))[0, 0]
    want = np.abs(np.arange(10)[:, None] - np.arange(10)[None, :]) <= 2
    assert np.array_equal(m, want)


def test_sliding_layer_ignores_tokens_outside_the_window():
    """One sliding layer (window 16 -> |i-j| <= 8): token 30 changes only positions 22..38."""
    cfg = registry.get("modernbert-tiny", num_hidden_layers=1, layer_types=("sliding",), vocab_size=64)[0]
    model = Encoder(cfg)
    ids = np.random.default_rng(3).integers(1, 64, (1, 48)).astype(np.int32)
    params = model.init(jax.random.key(0), ids)
    ids2 = ids.copy()
    ids2[0, 30] = (ids[0, 30] % 63) + 1
    both = np.stack([ids[0], ids2[0]])
    a, b = np.asarray(jax.jit(model.apply)(params, both).last_hidden_state)
    changed = np.abs(a - b).max(-1) > 0
    assert np.array_equal(np.flatnonzero(changed), np.arange(22, 39))
    glob = Encoder(cfg.replace(layer_types=("global",)))
    c, d = np.asarray(jax.jit(glob.apply)(params, both).last_hidden_state)
    assert (np.abs(c - d).max(-1) > 0).all()
