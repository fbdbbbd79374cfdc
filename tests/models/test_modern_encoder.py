"""The configurable encoder block (``jaxbert.models.transformer.model``): presets, logical axes, the BERT path
on real MiniLM weights, block variants, attention implementations, dtypes, PEFT extension sites
and clear errors for bad configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax import traverse_util

from jaxbert.models import registry
from jaxbert.models.transformer.model import Encoder, EncoderConfig
from jaxbert.models.layers import unpad
from jaxbert.models.task_models import build_task_model

IDS = np.array([[5, 9, 13, 22, 7, 3, 0, 0], [4, 8, 15, 16, 23, 42, 11, 2]], np.int32) % 64
MASK = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8], np.int32)


def tiny(name="modernbert-tiny", **kw) -> EncoderConfig:
    return registry.get(name, vocab_size=64, **kw)[0]


def run(cfg, ids=IDS, mask=MASK, params=None, **kw):
    model = Encoder(cfg)
    params = params if params is not None else model.init(jax.random.key(0), ids, mask)
    return params, np.asarray(jax.jit(lambda p: model.apply(p, ids, mask, **kw).last_hidden_state)(params),
                              np.float32)


def test_presets_and_logical_axes():
    """Every preset initialises abstractly; every parameter carries one logical name per dimension."""
    assert {"bert-base", "mosaicbert-base", "modernbert-base", "modernbert-large"} <= set(registry.names(kind="encoder"))
    for name in ("bert-base", "mosaicbert-base", "modernbert-base", "modernbert-large"):
        model = build_task_model(registry.get(name)[0], Encoder, "mlm")
        boxed = jax.eval_shape(lambda r: model.init(r, IDS), jax.random.key(0))["params"]
        flat = traverse_util.flatten_dict(boxed)
        for path, leaf in flat.items():
            assert isinstance(leaf, nn.LogicallyPartitioned), (name, path)
            assert len(leaf.names) == leaf.value.ndim, (name, path, leaf.names)
        paths = {"/".join(p) for p in flat}
        if name.startswith("modernbert"):
            assert "encoder/layer_1/attention/qkv/kernel" in paths and "encoder/final_norm/scale" in paths
            assert "encoder/layer_0/attention_norm/scale" not in paths
            assert not any(p.endswith("/bias") and "mlm_head/bias" not in p for p in paths)  # no biases
    assert registry.get("modernbert-base")[1] is Encoder


def test_bert_path_on_real_minilm_weights(minilm_dir, minilm_tokenize, read_texts):
    """BertModel's params run unchanged in the block with a BERT config and match transformers."""
    import torch
    import transformers
    from jaxbert.convert.hf import load_pretrained

    texts = read_texts("rotten_tomatoes/validation.jsonl", n=6)
    batch = minilm_tokenize(texts, max_length=64)
    pre = load_pretrained(minilm_dir)
    c = pre.config
    cfg, _ = registry.get("bert-base", vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                          num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                          intermediate_size=c.intermediate_size, layer_norm_eps=c.layer_norm_eps,
                          add_pooling_layer=True)
    model = Encoder(cfg)
    apply = jax.jit(lambda i, m, t, u=None: model.apply({"params": pre.params}, i, m, t, unpad_index=u).last_hidden_state)
    out = np.asarray(apply(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).last_hidden_state.numpy()
    m = batch["attention_mask"].astype(bool)
    diff = np.abs(out[m] - ref[m]).max()
    print(f"[parity] MiniLM through the configurable block: max |jax - torch| = {diff:.2e}")
    assert diff < 1e-4
    index = jnp.asarray(unpad.plan(batch["attention_mask"]))
    out_u = np.asarray(apply(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], index))
    assert np.abs(out_u[m] - ref[m]).max() < 1e-4


@pytest.mark.parametrize("changes", [
    dict(norm_type="rmsnorm", hidden_act="silu"),                                     # SwiGLU + RMSNorm
    dict(position_embedding_type="alibi", attention_pattern="sliding", local_attention=4),
    dict(norm_position="post", norm_bias=True, first_layer_attention_norm=True, qkv_layout="separate",
         mlp_type="mlp", mlp_in_bias=True, mlp_out_bias=True, attention_bias=True),
    dict(position_embedding_type="absolute", type_vocab_size=2, final_norm=False, embedding_norm=False),
])
def test_block_variants_train(changes):
    cfg = tiny(**changes)
    model = build_task_model(cfg, Encoder, "mlm")
    params = model.init(jax.random.key(0), IDS, MASK)["params"]
    loss = lambda p: model.apply({"params": p}, IDS, MASK)["logits"].mean()
    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    if changes.get("norm_type") == "rmsnorm":
        assert set(params["encoder"]["layer_1"]["mlp_norm"]) == {"scale"}


@pytest.mark.parametrize("name", ["mosaicbert-tiny", "modernbert-tiny"])
def test_attention_implementations_agree(name):
    """ALiBi bias (mosaic) and sliding windows (modern) through each implementation. On CPU both
    fused names run the reference path (see ``attention.dot_product_attention``); on GPU they reach
    ``jax.nn.dot_product_attention`` / cuDNN. ``tests/models/test_attention.py`` compares the reference
    with ``jax.nn.dot_product_attention`` directly."""
    ids = np.random.default_rng(0).integers(1, 64, (2, 40)).astype(np.int32)
    mask = (np.arange(40)[None] < np.array([[40], [17]])).astype(np.int32)
    params, ref = run(tiny(name), ids, mask)
    for impl in ("dot_product_attention", "cudnn"):
        _, out = run(tiny(name, attention_implementation=impl), ids, mask, params)
        assert np.abs(out - ref)[mask.astype(bool)].max() < 1e-5, impl


def test_dtypes_and_low_precision_norms():
    params, ref = run(tiny())
    model = Encoder(tiny(dtype="bfloat16"))
    boxed = model.init(jax.random.key(0), IDS, MASK)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(boxed)))  # storage fp32
    out = model.apply(params, IDS, MASK).last_hidden_state
    assert out.dtype == jnp.bfloat16
    m = MASK.astype(bool)
    err = np.abs(np.asarray(out, np.float32) - ref)[m].max()
    _, low = run(tiny(dtype="bfloat16", low_precision_norm=True), params=params)
    err_low = np.abs(low - ref)[m].max()
    assert err < 0.1 and err_low < 0.2, (err, err_low)
    bf16_params = Encoder(tiny(param_dtype="bfloat16")).init(jax.random.key(0), IDS, MASK)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(nn.unbox(bf16_params)))


def test_peft_extension_sites_on_the_block():
    adapters = pytest.importorskip("jaxbert.peft.adapters")
    prefix = pytest.importorskip("jaxbert.peft.prefix")
    base_params, ref = run(tiny())
    cfg = tiny(extensions=(adapters.AttentionAdapter(8), adapters.MlpAdapter(8)))
    params = Encoder(cfg).init(jax.random.key(0), IDS, MASK)
    assert {"adapter_attention", "adapter_mlp"} <= set(params["params"]["layer_2"])
    _, out = run(cfg, params=params)  # zero-initialised "up": the adapters start as identities
    m = MASK.astype(bool)
    np.testing.assert_allclose(out[m], ref[m], atol=1e-5)
    cfg = tiny(extensions=(prefix.PrefixExtension(length=3),))
    params, out = run(cfg)
    assert "prefix" in params["params"]["layer_0"]
    assert np.abs(out - ref)[m].max() > 1e-4
    _, out_u = run(cfg, params=params, unpad_index=jnp.asarray(unpad.plan(MASK)))
    assert np.abs(out_u - out)[m].max() < 1e-5


def test_remat_and_mlm_head_options():
    params, ref = run(tiny())
    _, out = run(tiny(remat=True), params=params)
    assert np.array_equal(out, ref)
    model = build_task_model(tiny(), Encoder, "mlm")
    head = model.init(jax.random.key(0), IDS)["params"]["mlm_head"]
    assert set(head) == {"transform", "transform_norm", "bias"}
    assert set(head["transform"]) == {"kernel"} and set(head["transform_norm"]) == {"scale"}


def test_bad_configs_are_clear():
    with pytest.raises(ValueError, match="local_attention=1024 .* larger than max_position_embeddings=512"):
        registry.get("modernbert-tiny", local_attention=1024)
    registry.get("modernbert-tiny", local_attention=1024, attention_pattern="global", layer_types=None)  # no window: fine
    with pytest.raises(ValueError, match="even head dimension"):
        registry.get("modernbert-tiny", hidden_size=60, num_attention_heads=4)  # head_dim 15
    registry.get("bert-tiny", hidden_size=60, num_attention_heads=4)  # odd head dim is fine without RoPE
    with pytest.raises(KeyError, match=r"unknown model preset 'modernbert-bse'; did you mean \['modernbert-base'"):
        registry.get("modernbert-bse")
    with pytest.raises(KeyError, match="unknown model preset 'mosaicbert'"):
        registry.get("mosaicbert")
    with pytest.raises(ValueError, match="norm_type='batchnorm'"):
        registry.get("bert-tiny", norm_type="batchnorm")
    with pytest.raises(ValueError, match="layer_types has 2 entries"):
        registry.get("modernbert-tiny", layer_types=("global", "sliding"))
    with pytest.raises(ValueError, match="one bias switch"):
        registry.get("bert-tiny", mlp_in_bias=False)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        run(registry.get("bert-tiny", max_position_embeddings=4, vocab_size=64)[0])
