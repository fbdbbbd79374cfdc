"""The dense matmul's hand-written backward equals autodiff's, alone and inside a BERT train loss."""

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest
from jax import lax

from jaxbert.models.layers import dense_matmul as dm


def _autodiff_matmul(x, w, k):
    return lax.dot_general(x, w, ((tuple(range(x.ndim - k, x.ndim)), tuple(range(k))), ((), ())))


@pytest.mark.parametrize("x_shape,w_shape,k", [
    ((3, 5, 16), (16, 4, 8), 1),   # q/k/v projection: [b, l, embed] x [embed, heads, kv]
    ((3, 5, 4, 8), (4, 8, 16), 2),  # attention output: [b, l, heads, kv] x [heads, kv, embed]
    ((7, 16), (16, 24), 1),         # pooled vectors
])
def test_explicit_backward_matches_autodiff(monkeypatch, x_shape, w_shape, k):
    monkeypatch.setenv("JAXBERT_DENSE_VJP", "explicit")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape).astype(np.float32))
    w = jnp.asarray(rng.normal(size=w_shape).astype(np.float32))
    g = jnp.asarray(rng.normal(size=x_shape[:len(x_shape) - k] + w_shape[k:]).astype(np.float32))
    y = dm.dense_matmul(x, w, k)
    np.testing.assert_allclose(y, _autodiff_matmul(x, w, k), rtol=1e-6, atol=1e-5)
    ours = jax.grad(lambda x, w: jnp.sum(dm.dense_matmul(x, w, k) * g), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: jnp.sum(_autodiff_matmul(x, w, k) * g), argnums=(0, 1))(x, w)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    # the custom rule is really the one differentiated
    assert "name=_explicit_vjp_matmul" in str(jax.make_jaxpr(lambda x, w: dm.dense_matmul(x, w, k))(x, w))


def test_bfloat16_gradients_keep_operand_dtypes(monkeypatch):
    monkeypatch.setenv("JAXBERT_DENSE_VJP", "explicit")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 6, 32)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(32, 48)), jnp.bfloat16)
    dx, dw = jax.grad(lambda x, w: jnp.sum(dm.dense_matmul(x, w).astype(jnp.float32)), argnums=(0, 1))(x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    ref_dw = np.asarray(x, np.float32).reshape(-1, 32).T @ np.ones((24, 48), np.float32)
    np.testing.assert_allclose(np.asarray(dw, np.float32), ref_dw, rtol=0.02, atol=0.1)


def _traced(x, w):
    """The jaxpr of a fresh function (the mode is read at trace time; a reused one is cached)."""
    return str(jax.make_jaxpr(lambda x, w: dm.dense_matmul(x, w))(x, w))


def test_mode_switch_and_errors(monkeypatch):
    x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    monkeypatch.setenv("JAXBERT_DENSE_VJP", "xla")
    assert "name=_explicit_vjp_matmul" not in _traced(x, w)
    monkeypatch.setenv("JAXBERT_DENSE_VJP", "auto")  # this suite runs on CPU: explicit
    assert ("name=_explicit_vjp_matmul" in _traced(x, w)) == (jax.default_backend() == "cpu")
    monkeypatch.setenv("JAXBERT_DENSE_VJP", "fast")
    with pytest.raises(ValueError, match="JAXBERT_DENSE_VJP='fast'"):
        dm.dense_matmul(x, w)
    monkeypatch.setenv("JAXBERT_DENSE_VJP", "explicit")
    with pytest.raises(ValueError, match=r"x \(2, 3\) and W \(4, 3\)"):
        dm.dense_matmul(x, jnp.ones((4, 3)))


def test_dense_dot_general_routes_only_dense_contractions(monkeypatch):
    monkeypatch.setenv("JAXBERT_DENSE_VJP", "explicit")
    x, w = jnp.ones((2, 5, 3)), jnp.ones((3, 4))
    dense = str(jax.make_jaxpr(lambda x, w: dm.dense_dot_general(x, w, (((2,), (0,)), ((), ()))))(x, w))
    assert "name=_explicit_vjp_matmul" in dense
    # a batched contraction is not a dense layer: plain dot_general, same value as lax
    a, b = jnp.arange(24.0).reshape(2, 3, 4), jnp.arange(40.0).reshape(2, 4, 5)
    dn = (((2,), (1,)), ((0,), (0,)))
    batched = jax.make_jaxpr(lambda a, b: dm.dense_dot_general(a, b, dn))(a, b)
    assert "name=_explicit_vjp_matmul" not in str(batched)
    np.testing.assert_array_equal(dm.dense_dot_general(a, b, dn), lax.dot_general(a, b, dn))
    # explicit precision is honoured by the fallback
    assert "name=_explicit_vjp_matmul" not in str(jax.make_jaxpr(
        lambda x, w: dm.dense_dot_general(x, w, (((2,), (0,)), ((), ())), precision=lax.Precision.HIGHEST))(x, w))


def test_bert_loss_gradients_equal_in_both_modes(monkeypatch):
    """A small BERT classifier (attention projections, MLP, pooler) in training mode with dropout:
    every parameter gradient equals the autodiff one."""
    from jaxbert.models import build_task_model, registry

    cfg, backbone = registry.get("bert-tiny", num_hidden_layers=2, vocab_size=97, max_position_embeddings=32)
    model = build_task_model(cfg, backbone, "sequence_classification", 3)
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(1, 97, size=(4, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None, :] < np.array([12, 9, 5, 12])[:, None], jnp.int32)
    labels = jnp.asarray([0, 2, 1, 2])
    params = nn.unbox(model.init(jax.random.key(0), input_ids=ids, attention_mask=mask))["params"]

    def make_loss():  # a fresh function per mode: jit and make_jaxpr cache traces per function
        def loss(p):
            out = model.apply({"params": p}, input_ids=ids, attention_mask=mask, deterministic=False,
                              rngs={"dropout": jax.random.key(5)})
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out["logits"]), labels[:, None], axis=-1))
        return loss

    grads = {}
    for mode in ("explicit", "xla"):
        monkeypatch.setenv("JAXBERT_DENSE_VJP", mode)
        loss = make_loss()
        jaxpr = str(jax.make_jaxpr(loss)(params))
        assert ("name=_explicit_vjp_matmul" in jaxpr) == (mode == "explicit")
        grads[mode] = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(grads["explicit"][0], grads["xla"][0], rtol=1e-6)
    flat_e = jax.tree_util.tree_leaves_with_path(grads["explicit"][1])
    flat_x = jax.tree.leaves(grads["xla"][1])
    assert len(flat_e) == len(flat_x)
    for (path, a), b in zip(flat_e, flat_x):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # the gradients are not trivially zero
    assert float(jnp.abs(grads["xla"][1]["encoder"]["layer_1"]["mlp"]["wi"]["kernel"]).max()) > 1e-4
