"""Monarch matrices: block-diagonal and Monarch products against explicitly materialised dense matrices."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import traverse_util
import flax.linen as nn

from jaxbert.models.layers import monarch


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _perm_matrix_rl_to_lr(r: int, l: int) -> np.ndarray:
    """0/1 matrix P of the reshape-transpose ``(r l) -> (l r)``: ``(x @ P)[j*r + i] = x[i*l + j]``."""
    n = r * l
    p = np.zeros((n, n), np.float32)
    for i in range(r):
        for j in range(l):
            p[i * l + j, j * r + i] = 1.0
    return p


def _explicit_monarch(w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """``B1 P1 B2 P2`` built from the factors with scipy's block_diag and explicit 0/1 permutation matrices."""
    k1, p1, q1 = w1.shape
    k2, p2, q2 = w2.shape
    b1 = scipy.linalg.block_diag(*w1)                 # [k1 p1, k1 q1]
    perm1 = _perm_matrix_rl_to_lr(k1 * q1 // k2, k2)  # "(r l) -> (l r)", l = k2
    b2 = scipy.linalg.block_diag(*w2)                 # [k2 p2, k2 q2]
    perm2 = _perm_matrix_rl_to_lr(k2, q2)             # "(l s) -> (s l)", l = k2
    return b1 @ perm1 @ b2 @ perm2


@pytest.mark.parametrize("k,p,q", [(1, 5, 3), (2, 3, 4), (4, 8, 8), (4, 6, 24), (3, 7, 2)])
def test_blockdiag_multiply_equals_dense_block_diagonal(k, p, q):
    rng = np.random.default_rng(0)
    w = _rand(rng, k, p, q)
    x = _rand(rng, 2, 5, k * p)
    dense = scipy.linalg.block_diag(*w)
    assert dense.shape == (k * p, k * q)
    got = monarch.blockdiag_multiply(jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(got), x @ dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(monarch.blockdiag_dense(jnp.asarray(w))), dense)


@pytest.mark.parametrize("w1_shape,w2_shape", [
    ((4, 4, 4), (4, 4, 4)),     # square, nblocks = sqrt(n): the classic Monarch matrix
    ((2, 3, 4), (4, 2, 5)),     # rectangular, different block counts
    ((4, 8, 6), (3, 8, 2)),     # k1 q1 = 24 = k2 p2
    ((1, 6, 6), (6, 1, 1)),
])
def test_monarch_product_equals_explicit_dense_matrix(w1_shape, w2_shape):
    rng = np.random.default_rng(1)
    w1, w2 = _rand(rng, *w1_shape), _rand(rng, *w2_shape)
    n = w1_shape[0] * w1_shape[1]
    x = _rand(rng, 3, n)
    m = _explicit_monarch(w1, w2)
    got = monarch.monarch_multiply(jnp.asarray(x), jnp.asarray(w1), jnp.asarray(w2))
    np.testing.assert_allclose(np.asarray(got), x @ m, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(monarch.monarch_dense(jnp.asarray(w1), jnp.asarray(w2))), m,
                               rtol=1e-5, atol=1e-5)


def test_monarch_matches_reference_einsum_form():
    """The reference's version-1 formula (``einsum('bkp,kqp,qlk->blq')``, torch [out, in] blocks) for sqrt(n) blocks."""
    rng = np.random.default_rng(2)
    s = 4
    w1, w2 = _rand(rng, s, s, s), _rand(rng, s, s, s)    # ours: [blocks, in, out]
    w1_bfly, w2_bfly = w1.transpose(0, 2, 1), w2.transpose(0, 2, 1)  # reference: [blocks, out, in]
    x = _rand(rng, 5, s * s)
    ref = np.einsum("bkp,kqp,qlk->blq", x.reshape(5, s, s), w1_bfly, w2_bfly).reshape(5, s * s)
    got = monarch.monarch_multiply(jnp.asarray(x), jnp.asarray(w1), jnp.asarray(w2))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


def test_monarch_is_not_block_diagonal():
    """The permutations mix blocks: a square Monarch matrix with nblocks = sqrt(n) is dense in general."""
    rng = np.random.default_rng(3)
    m = _explicit_monarch(_rand(rng, 4, 4, 4), _rand(rng, 4, 4, 4))
    assert np.count_nonzero(np.abs(m) > 0) == m.size


def test_mismatched_factors_raise():
    with pytest.raises(ValueError, match="expects"):
        monarch.monarch_multiply(jnp.zeros((1, 8)), jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="features"):
        monarch.blockdiag_multiply(jnp.zeros((1, 7)), jnp.zeros((2, 4, 3)))


def _init(module, x):
    variables = module.init(jax.random.key(0), x)
    return variables, module.apply(variables, x)


@pytest.mark.parametrize("n_in,n_out,k", [(16, 32, 4), (10, 7, 4), (12, 12, 3)])
def test_blockdiag_linear_module(n_in, n_out, k):
    x = jnp.asarray(_rand(np.random.default_rng(4), 2, 3, n_in))
    layer = monarch.BlockdiagLinear(n_out, nblocks=k)
    variables, y = _init(layer, x)
    params = nn.unbox(variables["params"])
    p, n_in_ext = monarch.blocks_for(n_in, k)
    q, n_out_ext = monarch.blocks_for(n_out, k)
    assert params["kernel"].shape == (k, p, q)
    dense = scipy.linalg.block_diag(*np.asarray(params["kernel"]))[:n_in, :n_out]  # zero-padded in, cropped out
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ dense + np.asarray(params["bias"]), rtol=1e-5, atol=1e-5)
    # Initialisation as the reference: U(+-1/sqrt(block fan-in)); bias U(+-1/sqrt(n_out)).
    assert np.abs(params["kernel"]).max() <= 1 / math.sqrt(p) + 1e-7
    assert np.abs(params["bias"]).max() <= 1 / math.sqrt(n_out) + 1e-7
    # Logical axis names: block axis replicated, then the dense layer's names.
    assert variables["params"]["kernel"].names == (None, "embed", "mlp")


def test_blockdiag_init_scale_matches_reference():
    """Block entries ~ U(-1/sqrt(p), 1/sqrt(p)): std 1/sqrt(3p), as kaiming_uniform(a=sqrt(5)) * sqrt(nblocks)."""
    layer = monarch.BlockdiagLinear(3072, nblocks=4)
    params = nn.unbox(layer.init(jax.random.key(1), jnp.zeros((1, 768)))["params"])
    p = 768 // 4
    assert params["kernel"].shape == (4, 192, 768)
    np.testing.assert_allclose(float(np.std(params["kernel"])), 1 / math.sqrt(3 * p), rtol=0.02)


def test_monarch_linear_module():
    n_in, n_out, k = 16, 16, 4
    x = jnp.asarray(_rand(np.random.default_rng(5), 3, n_in))
    layer = monarch.MonarchLinear(n_out, nblocks=k)
    variables, y = _init(layer, x)
    params = nn.unbox(variables["params"])
    m = _explicit_monarch(np.asarray(params["w1"]), np.asarray(params["w2"]))
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ m + np.asarray(params["bias"]), rtol=1e-5, atol=1e-5)
    n_weights = sum(v.size for k_, v in traverse_util.flatten_dict(params).items() if k_[-1] != "bias")
    assert n_weights == 2 * n_in * n_out // k < n_in * n_out
