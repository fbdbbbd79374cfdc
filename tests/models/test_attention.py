"""The XLA attention path against ``jax.nn.dot_product_attention`` and a direct softmax formula.

The reference path reorders the computation (heads-first layout, pre-scaled query, additive
mask, normalisation after the value matmul); these tests pin that it is still attention.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.models.layers import attention as att


def _inputs(b=3, q=7, k=9, h=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    qkv = [jnp.asarray(rng.standard_normal((b, n, h, d)), jnp.float32) for n in (q, k, k)]
    mask = np.ones((b, 1, q, k), bool)
    mask[1, :, :, 5:] = False          # padded keys
    mask[2, :, 3, :] = False           # a query that may attend nowhere
    bias = jnp.asarray(rng.standard_normal((1, h, q, k)), jnp.float32)
    return qkv, jnp.asarray(mask), bias


def test_reference_matches_jax_nn_with_mask_and_bias():
    (q, k, v), mask, bias = _inputs()
    ours = att.dot_product_attention(q, k, v, mask=mask, bias=bias, implementation="xla")
    theirs = jax.nn.dot_product_attention(q, k, v, mask=mask, bias=bias, implementation="xla")
    keep = np.asarray(mask).any(-1)[:, 0, :]  # rows with at least one visible key
    err = np.abs(np.asarray(ours) - np.asarray(theirs))[keep].max()
    print(f"[attention] reference vs jax.nn.dot_product_attention: max|d| = {err:.2e}")
    assert err < 1e-5


def test_fully_masked_row_is_uniform_average_not_nan():
    (q, k, v), mask, _ = _inputs()
    out = np.asarray(att.dot_product_attention(q, k, v, mask=mask))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[2, 3], np.asarray(v)[2].mean(0), atol=1e-5)


def test_bfloat16_inputs_keep_dtype_and_stay_close():
    (q, k, v), mask, bias = _inputs()
    ref = np.asarray(att.dot_product_attention(q, k, v, mask=mask, bias=bias))
    low = att.dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask=mask, bias=bias)
    assert low.dtype == jnp.bfloat16
    keep = np.asarray(mask).any(-1)[:, 0, :]
    assert np.abs(np.asarray(low, np.float32) - ref)[keep].max() < 0.05


def test_dropout_equals_dropout_on_normalised_weights():
    """Dropping unnormalised weights and dividing afterwards is dropout on the softmax weights."""
    (q, k, v), mask, _ = _inputs()
    rate, rng = 0.3, jax.random.key(3)
    out = att.dot_product_attention(q, k, v, mask=mask, dropout_rate=rate, dropout_rng=rng, deterministic=False)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    weights = jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1)
    keepers = att.keep_mask(rng, weights.shape, rate)
    dropped = jnp.where(keepers, weights / (1.0 - rate), 0.0)
    direct = jnp.einsum("bhqk,bkhd->bqhd", dropped, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(direct), atol=1e-5)
    same = att.dot_product_attention(q, k, v, mask=mask, dropout_rate=rate, dropout_rng=rng, deterministic=True)
    assert np.abs(np.asarray(same) - np.asarray(out)).max() > 1e-3  # dropout really acted when not deterministic


def test_unknown_implementation_is_named():
    (q, k, v), mask, _ = _inputs()
    try:
        att.dot_product_attention(q, k, v, implementation="flash9")
    except ValueError as e:
        assert "flash9" in str(e) and "xla" in str(e)
    else:
        raise AssertionError("an unknown implementation must raise")
