"""Llama-family decoder (jaxbert/models/llm.py) on tiny random configs: logical axes, padding,
causal vs bidirectional, HF safetensors parity (Llama and Qwen2 via transformers), RoPE scaling,
greedy generation with left/right padding."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import traverse_util

from jaxbert.models import registry
from jaxbert.models.llm import model as llm
from jaxbert.models.llm.model import LlmConfig, LlmModel, greedy_generate


def _init(cfg: LlmConfig, seed: int = 0) -> dict:
    model = LlmModel(cfg)
    v = model.init(jax.random.key(seed), np.zeros((1, 8), np.int32))
    # Random norms too, so a transposed / misnamed norm would show.
    params = nn.unbox(v["params"])
    flat = traverse_util.flatten_dict(params)
    rng = np.random.default_rng(seed)
    for k in flat:
        if k[-1] == "scale" or k[-1] == "bias":
            flat[k] = jnp.asarray(1.0 + 0.1 * rng.standard_normal(flat[k].shape) if k[-1] == "scale"
                                  else 0.1 * rng.standard_normal(flat[k].shape), jnp.float32)
    return traverse_util.unflatten_dict(flat)


def _batch(rng, b=3, l=9, vocab=256, left=False):
    ids = rng.integers(3, vocab, (b, l)).astype(np.int32)
    lens = np.array([l, l - 3, l - 5][:b])
    mask = (np.arange(l)[None] < lens[:, None]).astype(np.int32)
    if left:
        mask = mask[:, ::-1].copy()
    ids = np.where(mask > 0, ids, 0).astype(np.int32)
    return ids, mask


@pytest.mark.parametrize("name", ["llama-tiny", "qwen2-tiny"])
def test_every_param_has_logical_axes(name):
    cfg = registry.get(name)[0]
    v = jax.eval_shape(lambda r: LlmModel(cfg).init(r, np.zeros((1, 4), np.int32)), jax.random.key(0))
    flat = traverse_util.flatten_dict(v["params"])
    assert flat, "no params"
    for path, leaf in flat.items():
        assert isinstance(leaf, nn.Partitioned), f"{'/'.join(path)} has no logical axis names"
        assert len(leaf.names) == len(leaf.value.shape), path
    paths = {"/".join(k) for k in flat}
    assert ("lm_head/kernel" in paths) == (not cfg.tie_word_embeddings)
    assert ("layer_0/attention/query/bias" in paths) == cfg.attention_bias
    assert LlmConfig.param_count(cfg) == sum(int(np.prod(l.value.shape)) for l in flat.values())


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_left_and_right_padding_match_unpadded(mode):
    cfg = registry.get("llama-tiny")[0]
    params = _init(cfg)
    model = LlmModel(cfg)
    rng = np.random.default_rng(1)
    for left in (False, True):
        ids, mask = _batch(rng, left=left)
        out = model.apply({"params": params}, ids, mask, attention_mode=mode, return_logits=True)
        for r in range(ids.shape[0]):
            real = mask[r].astype(bool)
            ref = model.apply({"params": params}, ids[r:r + 1, real], attention_mode=mode, return_logits=True)
            np.testing.assert_allclose(np.asarray(out.logits[r, real]), np.asarray(ref.logits[0]), atol=2e-5, rtol=0)


def test_bidirectional_differs_from_causal_exactly_where_it_should():
    """Changing token j changes earlier positions only in bidirectional mode; positions >= j change in both."""
    cfg = registry.get("llama-tiny")[0]
    params = _init(cfg)
    model = LlmModel(cfg)
    ids = np.random.default_rng(2).integers(3, 256, (1, 10)).astype(np.int32)
    j = 6
    ids2 = ids.copy()
    ids2[0, j] = (ids[0, j] + 17) % 256
    for mode in ("causal", "bidirectional"):
        a = np.asarray(model.apply({"params": params}, ids, attention_mode=mode).last_hidden_state[0])
        b = np.asarray(model.apply({"params": params}, ids2, attention_mode=mode).last_hidden_state[0])
        before = np.abs(a[:j] - b[:j]).max(axis=-1)
        after = np.abs(a[j:] - b[j:]).max(axis=-1)
        assert (after > 1e-4).all(), mode
        if mode == "causal":
            assert before.max() == 0.0, before
        else:
            assert (before > 1e-4).all(), before
    # Both modes agree on the first token only when nothing follows it... and differ otherwise.
    c = np.asarray(model.apply({"params": params}, ids, attention_mode="causal").last_hidden_state[0])
    bi = np.asarray(model.apply({"params": params}, ids, attention_mode="bidirectional").last_hidden_state[0])
    assert np.abs(c[:-1] - bi[:-1]).max() > 1e-3
    # The config default is the mode used when the call gives none.
    d = LlmModel(cfg.replace(attention_mode="bidirectional")).apply({"params": params}, ids).last_hidden_state[0]
    np.testing.assert_array_equal(np.asarray(d), bi)


def test_attention_mode_and_config_errors():
    cfg = registry.get("llama-tiny")[0]
    params = _init(cfg)
    with pytest.raises(ValueError, match="attention_mode"):
        LlmModel(cfg).apply({"params": params}, np.zeros((1, 3), np.int32), attention_mode="sideways")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        LlmConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="rope"):
        LlmConfig.from_hf_dict({"model_type": "llama", "rope_scaling": {"type": "yarn", "factor": 2.0}})
    with pytest.raises(ValueError, match="model_type"):
        LlmConfig.from_hf_dict({"model_type": "gpt2"})
    with pytest.raises(KeyError, match="unknown model preset 'llama-tinyy'"):
        registry.get("llama-tinyy")


@pytest.mark.parametrize("name", ["llama-tiny", "qwen2-tiny"])
def test_hf_safetensors_parity_and_roundtrip(tmp_path, name):
    """Export to an HF dir, load it in transformers (torch fp32) and back in jaxbert: same logits."""
    torch = pytest.importorskip("torch")
    import transformers

    from jaxbert.convert.hf import save_pretrained
    from jaxbert.models.llm.hf import load_llm

    cfg = registry.get(name)[0]
    params = _init(cfg, seed=3)
    save_pretrained(tmp_path / "m", params, cfg)
    cls = transformers.LlamaForCausalLM if cfg.model_type == "llama" else transformers.Qwen2ForCausalLM
    ref = cls.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    ids, mask = _batch(np.random.default_rng(4))
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        t_logits = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
    j_logits = np.asarray(LlmModel(cfg).apply({"params": params}, ids, mask, return_logits=True).logits)
    real = mask.astype(bool)
    diff = np.abs(t_logits[real] - j_logits[real]).max()
    assert diff < 1e-4, diff
    back = load_llm(tmp_path / "m")
    assert back.config == cfg
    flat_a, flat_b = traverse_util.flatten_dict(params), traverse_util.flatten_dict(back.params)
    assert set(flat_a) == set(flat_b)
    for k in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=str(k))


def test_rope_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 2, "rope_theta": 500000.0,
          "rope_scaling": scaling, "max_position_embeddings": 512}
    cfg = LlmConfig.from_hf_dict(hf)
    ours = llm.rope_inv_freq(cfg)
    hfc = LlamaConfig(**{k: v for k, v in hf.items() if k != "model_type"})
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hfc, "cpu")
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    lin = LlmConfig(hidden_size=64, num_attention_heads=2, rope_scaling=(("factor", 4.0), ("rope_type", "linear")))
    np.testing.assert_allclose(llm.rope_inv_freq(lin), llm.rope_inv_freq(lin.replace(rope_scaling=None)) / 4.0,
                               rtol=1e-6)


def test_greedy_generate_left_right_padding_agree():
    cfg = registry.get("qwen2-tiny")[0]
    params = _init(cfg, seed=5)
    model = LlmModel(cfg)
    rng = np.random.default_rng(6)
    ids, mask = _batch(rng, b=2, l=7)
    left_ids = np.zeros_like(ids)
    left_mask = mask[:, ::-1].copy()
    for r in range(2):
        n = mask[r].sum()
        left_ids[r, -n:] = ids[r, :n]
    a = greedy_generate(model, params, ids, mask, max_new_tokens=6)
    b = greedy_generate(model, params, left_ids, left_mask, max_new_tokens=6)
    np.testing.assert_array_equal(a, b)
    # Against a step-by-step reference on the unpadded second row.
    seq = list(ids[1, :mask[1].sum()])
    for _ in range(6):
        logits = model.apply({"params": params}, np.array([seq], np.int32), return_logits=True).logits
        seq.append(int(jnp.argmax(logits[0, -1])))
    assert list(a[1]) == seq[-6:]
