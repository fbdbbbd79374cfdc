"""The block's seams (jaxbert/models/layers): an injected matmul reaches every dense layer of the
blocks, attention kinds come from a registry, the attention runs for a kept subset of tokens, and
the LLM decoder block has the encoder's extension sites (PEFT adapters train on it)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax import lax

from jaxbert.models import registry
from jaxbert.models.layers import attention as attention_lib
from jaxbert.models.layers import linear
from jaxbert.models.layers.mlp import Mlp
from jaxbert.models.layers.norms import LayerNorm
from jaxbert.models.llm.model import LlmModel
from jaxbert.models.transformer.model import Encoder, EncoderBlock
from jaxbert.peft.adapters import AttentionAdapter, MlpAdapter

IDS = jnp.asarray(np.random.default_rng(0).integers(1, 64, (2, 12)), jnp.int32)
MASK = jnp.asarray((np.arange(12)[None] < np.array([[12], [7]])).astype(np.int32))

# Every dense layer's kernel inside the blocks, by the parameter names of the three block kinds.
BLOCK_KERNELS = {"query", "key", "value", "qkv", "out", "wi", "wo", "gate", "up", "down"}

_CALLS: list[tuple[int, ...]] = []


def _recording_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    """Records the kernel shape of each call, then scales the product by 1.5 (to see that it is used)."""
    _CALLS.append(tuple(rhs.shape))
    return 1.5 * lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                 preferred_element_type=preferred_element_type, **kw)


linear.register_dot_general("test_recording", _recording_dot_general, replace=True)


def _block_kernel_shapes(params) -> list[tuple[int, ...]]:
    flat = traverse_util.flatten_dict(nn.unbox(params))
    return sorted(tuple(v.shape) for k, v in flat.items()
                  if k[-1] == "kernel" and k[-2] in BLOCK_KERNELS and str(k[0]).startswith("layer_"))


@pytest.mark.parametrize("name", ["bert-tiny", "modernbert-tiny", "mosaicbert-tiny"])
def test_injected_dot_general_reaches_every_attention_and_mlp_matmul(name):
    cfg = registry.get(name, vocab_size=64, num_hidden_layers=2)[0]
    params = Encoder(cfg).init(jax.random.key(0), IDS, MASK)["params"]
    ref = Encoder(cfg).apply({"params": params}, IDS, MASK).last_hidden_state
    _CALLS.clear()
    out = Encoder(cfg.replace(dot_general="test_recording")).apply({"params": params}, IDS, MASK).last_hidden_state
    expected = _block_kernel_shapes(params)
    assert len(expected) == 2 * (4 if cfg.qkv_layout == "fused" else 6), expected
    assert sorted(_CALLS) == expected  # one call per kernel: every projection and MLP matmul, nothing else
    assert float(jnp.abs(out - ref).max()) > 1e-2  # and its result is what the block used


def test_injected_dot_general_on_the_llm_block():
    cfg = registry.get("llama-tiny")[0]
    params = LlmModel(cfg).init(jax.random.key(0), IDS, MASK)["params"]
    _CALLS.clear()
    LlmModel(cfg.replace(dot_general="test_recording")).apply({"params": params}, IDS, MASK)
    expected = _block_kernel_shapes(params)
    assert len(expected) == cfg.num_hidden_layers * 7
    assert sorted(_CALLS) == expected


def test_standard_names_and_clear_errors():
    assert linear.get_dot_general("standard") is linear.DOT_GENERALS["standard"]
    with pytest.raises(ValueError, match="dot_general='nope'"):
        registry.get("bert-tiny", dot_general="nope")
    with pytest.raises(ValueError, match="attention_kind='nope'"):
        registry.get("bert-tiny", attention_kind="nope")
    with pytest.raises(ValueError, match="already registered"):
        linear.register_dot_general("standard", _recording_dot_general)
    with pytest.raises(ValueError, match="unknown attention kind"):
        attention_lib.get_attention_kind("nope")


class _ZeroOutAttention(attention_lib.MultiHeadAttention):
    """Standard attention whose output is zeroed: the block then equals its MLP half."""

    def __call__(self, x, *args, **kwargs):
        return 0.0 * super().__call__(x, *args, **kwargs)


def test_attention_kind_from_the_registry():
    attention_lib.register_attention_kind("test_zero", _ZeroOutAttention, replace=True)
    cfg = registry.get("bert-tiny", vocab_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)[0]
    x = jax.random.normal(jax.random.key(1), (2, 12, cfg.hidden_size))
    mask = attention_lib.padding_mask(MASK)
    block = EncoderBlock(cfg, 0)
    params = block.init(jax.random.key(0), x, mask)["params"]
    out = EncoderBlock(cfg.replace(attention_kind="test_zero"), 0).apply({"params": params}, x, mask)
    # x + 0 through the attention norm, then the MLP sub-layer: the same params, no attention.
    norm = lambda name, v: LayerNorm(epsilon=cfg.layer_norm_eps).apply({"params": params[name]}, v)
    h = norm("attention_norm", x)
    want = norm("mlp_norm", h + Mlp(cfg.intermediate_size).apply({"params": params["mlp"]}, h))
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("name,changes", [
    ("bert-tiny", {}),                                                     # post-norm, separate q/k/v
    ("modernbert-tiny", {}),                                               # pre-norm, RoPE, sliding, fused
    ("modernbert-tiny", {"attention_pattern": "global"}),
    ("mosaicbert-tiny", {}),                                               # ALiBi bias rows
])
def test_kept_token_queries_equal_the_full_output_at_those_tokens(name, changes):
    cfg = registry.get(name, vocab_size=64, num_hidden_layers=2, local_attention=4, **changes)[0]
    model = Encoder(cfg)
    params = model.init(jax.random.key(0), IDS, MASK)["params"]
    segments = jnp.asarray(np.repeat([[1] * 5 + [2] * 7], 2, axis=0), jnp.int32)
    index = jnp.asarray([[0, 3, 4, 11], [6, 1, 2, 2]], jnp.int32)  # any order, repeats allowed
    for seg in (None, segments):
        full = model.apply({"params": params}, IDS, MASK, segment_ids=seg).last_hidden_state
        kept = model.apply({"params": params}, IDS, MASK, segment_ids=seg, query_index=index).last_hidden_state
        assert kept.shape == (2, 4, cfg.hidden_size)
        want = jnp.take_along_axis(full, index[..., None], axis=1)
        np.testing.assert_allclose(np.asarray(kept), np.asarray(want), atol=1e-6, rtol=0)
    # first_token_only is the k = 1, index-0 case (a slice instead of a gather): the same numbers.
    first = model.apply({"params": params}, IDS, MASK, query_index=jnp.zeros((2, 1), jnp.int32)).last_hidden_state
    short = Encoder(cfg.replace(first_token_shortcut=True)).apply({"params": params}, IDS, MASK,
                                                                  first_token_only=True).last_hidden_state
    np.testing.assert_allclose(np.asarray(first), np.asarray(short), atol=1e-6, rtol=0)


def test_kept_token_queries_are_refused_with_unpadding():
    cfg = registry.get("modernbert-tiny", vocab_size=64, unpad=True)[0]
    model = Encoder(cfg)
    params = model.init(jax.random.key(0), IDS, MASK)["params"]
    with pytest.raises(ValueError, match="query_index"):
        model.apply({"params": params}, IDS, MASK, query_index=jnp.zeros((2, 1), jnp.int32))


def test_adapter_extension_on_the_llm_block_changes_outputs_and_trains_only_its_leaves():
    base = registry.get("llama-tiny")[0]
    cfg = base.replace(extensions=(AttentionAdapter(bottleneck=8), MlpAdapter(bottleneck=8)))
    model = LlmModel(cfg)
    params = nn.unbox(model.init(jax.random.key(0), IDS, MASK)["params"])
    base_params = nn.unbox(LlmModel(base).init(jax.random.key(0), IDS, MASK)["params"])
    flat = traverse_util.flatten_dict(params, sep="/")
    adapter = {k for k in flat if "/adapter_" in k}
    assert {"layer_1/adapter_attention/down/kernel", "layer_0/adapter_mlp/up/kernel"} <= adapter
    assert set(flat) - adapter == set(traverse_util.flatten_dict(base_params, sep="/"))  # base tree unchanged
    run = lambda m, p: m.apply({"params": p}, IDS, MASK, return_logits=True).logits
    base_logits = run(LlmModel(base), traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if k not in adapter}, sep="/"))
    # Zero-initialised "up": the adapters start as identities.
    np.testing.assert_allclose(np.asarray(run(model, params)), np.asarray(base_logits), atol=1e-6)

    trainable = traverse_util.unflatten_dict({k: k in adapter for k in flat}, sep="/")
    opt = optax.masked(optax.adam(3e-2), trainable)
    targets = jnp.roll(IDS, -1, axis=1)

    def loss(p):
        logits = run(model, p)
        ll = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
        return -jnp.sum(ll * MASK) / jnp.sum(MASK)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        g = jax.tree.map(lambda x, t: x if t else jnp.zeros_like(x), g, trainable)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, value

    p, s = params, opt.init(params)
    losses = []
    for _ in range(8):
        p, s, value = step(p, s)
        losses.append(float(value))
    assert losses[-1] < losses[0] - 1e-3, losses
    new = traverse_util.flatten_dict(p, sep="/")
    changed = {k for k, v in flat.items() if not np.array_equal(np.asarray(v), np.asarray(new[k]))}
    assert changed <= adapter  # the base model is frozen
    assert {k for k in adapter if "/up/" in k} <= changed  # every adapter's output projection learned
    assert float(jnp.abs(run(model, p) - base_logits).max()) > 1e-3  # the trained adapters change the outputs


def test_prefix_extension_on_the_llm_block():
    prefix = pytest.importorskip("jaxbert.peft.prefix")
    base = registry.get("llama-tiny")[0]
    cfg = base.replace(extensions=(prefix.PrefixExtension(length=3),))
    model = LlmModel(cfg)
    params = nn.unbox(model.init(jax.random.key(0), IDS, MASK)["params"])
    assert params["layer_0"]["prefix"]["key"].shape == (3, base.num_attention_heads, base.head_dim)
    out = model.apply({"params": params}, IDS, MASK).last_hidden_state
    plain = {k: v for k, v in params.items()}
    for i in range(base.num_hidden_layers):
        plain[f"layer_{i}"] = {k: v for k, v in params[f"layer_{i}"].items() if k != "prefix"}
    ref = LlmModel(base).apply({"params": plain}, IDS, MASK).last_hidden_state
    assert float(jnp.abs(out - ref).max()) > 1e-4


def test_bert_is_the_configurable_block():
    """One implementation: BERT's names are the shared classes, its config the BERT-flavoured EncoderConfig."""
    from jaxbert.models import registry
    from jaxbert.models.bert.model import BertConfig, BertEmbeddings, BertLayer, BertModel
    from jaxbert.models.transformer.model import EncoderConfig, EncoderEmbeddings

    assert BertModel is Encoder and BertLayer is EncoderBlock and BertEmbeddings is EncoderEmbeddings
    cfg, backbone = registry.get("minilm-l6-h384")
    assert backbone is Encoder and isinstance(cfg, BertConfig) and isinstance(cfg, EncoderConfig)
    assert (cfg.model_type, cfg.add_pooling_layer, cfg.first_token_shortcut) == ("bert", True, True)
    assert (cfg.norm_position, cfg.position_embedding_type, cfg.qkv_layout, cfg.mlp_type) == (
        "post", "absolute", "separate", "mlp")
    assert EncoderConfig().first_token_shortcut is False  # MosaicBERT / ModernBERT keep their full last block


class _ClippedDistanceBias(nn.Module):
    """A relative-position kind for the test: one learned bias per head and clipped signed distance."""

    config: object

    @nn.compact
    def __call__(self, q_positions, k_positions):
        cfg, span = self.config, 4
        table = self.param("embedding", nn.initializers.normal(1.0), (2 * span + 1, cfg.num_attention_heads))
        d = jnp.clip(k_positions[:, None, :] - q_positions[:, :, None], -span, span) + span  # [b, q, k]
        return {"bias": jnp.moveaxis(table[d], -1, 1)}  # [b, h, q, k]


def test_relative_position_kind_is_built_once_and_read_by_every_layer():
    from jaxbert.models.layers import relative
    relative.register_relative_kind("test_clipped", _ClippedDistanceBias, replace=True)
    with pytest.raises(ValueError, match="relative_positions='nope'.*test_clipped"):
        registry.get("bert-tiny", relative_positions="nope")
    cfg = registry.get("bert-tiny", vocab_size=64, num_hidden_layers=2, position_embedding_type="none",
                       relative_positions="test_clipped")[0]
    model = Encoder(cfg)
    params = model.init(jax.random.key(0), IDS, MASK)["params"]
    assert params["relative_positions"]["embedding"].shape == (9, cfg.num_attention_heads)
    assert not any("relative" in k for k in params["layer_0"])  # one table for the encoder, not per layer
    full = model.apply({"params": params}, IDS, MASK).last_hidden_state
    # the table is what the layers read: zeroing it changes every real token's output
    zeroed = {**params, "relative_positions": {"embedding": jnp.zeros_like(params["relative_positions"]["embedding"])}}
    other = model.apply({"params": zeroed}, IDS, MASK).last_hidden_state
    assert float(jnp.abs(other - full).max(-1)[MASK.astype(bool)].min()) > 1e-3
    # kept queries and the [CLS]-only last block get the context at their own rows
    index = jnp.asarray([[0, 3, 4, 11], [6, 1, 2, 2]], jnp.int32)
    kept = model.apply({"params": params}, IDS, MASK, query_index=index).last_hidden_state
    np.testing.assert_allclose(np.asarray(kept), np.asarray(jnp.take_along_axis(full, index[..., None], 1)), atol=1e-6)
    short = Encoder(cfg.replace(first_token_shortcut=True)).apply({"params": params}, IDS, MASK,
                                                                  first_token_only=True).last_hidden_state
    np.testing.assert_allclose(np.asarray(short[:, 0]), np.asarray(full[:, 0]), atol=1e-6)
    # unpadded execution works on position ids: the padded result at every real token
    unpadded = Encoder(cfg.replace(unpad=True)).apply({"params": params}, IDS, MASK).last_hidden_state
    real = MASK.astype(bool)
    np.testing.assert_allclose(np.asarray(unpadded)[real], np.asarray(full)[real], atol=1e-5)
