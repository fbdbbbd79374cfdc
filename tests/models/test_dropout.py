"""Hash dropout: keep rate, independence across keys and elements, scaling, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert.models.layers.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_rate(rate):
    m = np.asarray(keep_mask(jax.random.key(0), (64, 12, 32, 32), rate))
    n = m.size
    tol = 5 * np.sqrt(rate * (1 - rate) / n)  # five standard errors
    assert abs(m.mean() - (1 - rate)) < tol, (m.mean(), 1 - rate)


def test_masks_of_different_keys_are_independent():
    a = np.asarray(keep_mask(jax.random.key(1), (200_000,), 0.5))
    b = np.asarray(keep_mask(jax.random.key(2), (200_000,), 0.5))
    agree = (a == b).mean()
    assert abs(agree - 0.5) < 5 * 0.5 / np.sqrt(a.size), agree
    # neighbouring elements are uncorrelated too (a lag-1 check on one mask)
    lag = np.corrcoef(a[:-1].astype(float), a[1:].astype(float))[0, 1]
    assert abs(lag) < 5 / np.sqrt(a.size), lag


def test_deterministic_per_key_and_scaled():
    x = jnp.ones((8, 16))
    y1 = dropout(x, 0.25, jax.random.key(3))
    y2 = dropout(x, 0.25, jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    vals = np.unique(np.asarray(y1))
    assert len(vals) == 2 and vals[0] == 0.0 and abs(vals[1] - 1 / 0.75) < 1e-6, vals


def test_module_matches_flax_contract():
    x = jnp.ones((4, 10))
    mod = Dropout(0.3)
    assert (mod.apply({}, x, deterministic=True) == x).all()
    out = mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert 0 < float((out == 0).mean()) < 1
    with pytest.raises(ValueError, match="rate"):
        keep_mask(jax.random.key(0), (3,), 1.0)
    with pytest.raises(ValueError, match="unknown dropout impl 'philox'"):
        keep_mask(jax.random.key(0), (3,), 0.1, impl="philox")
