"""GGUF import (jaxbert/convert/gguf.py) on tiny files written here: Q/K un-permutation, name map,
quantized tensors, and clear errors for unsupported architectures, tensor types and tokenizers."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import flax.linen as nn
from flax import traverse_util

pytest.importorskip("gguf")

from jaxbert.models.llm.gguf import GGUFError, permute_qk, read_gguf, unpermute_qk, write_gguf  # noqa: E402
from jaxbert.models.llm.hf import load_llm, load_llm_tokenizer  # noqa: E402
from jaxbert.convert.hf import params_to_hf  # noqa: E402
from jaxbert.models import registry  # noqa: E402
from jaxbert.models.llm.model import LlmModel  # noqa: E402


def _params(cfg, seed=0):
    v = LlmModel(cfg).init(jax.random.key(seed), np.zeros((1, 4), np.int32))
    return nn.unbox(v["params"])


def _hf_state(params, cfg):
    return params_to_hf(params, cfg, "base")  # *ForCausalLM names: backbone under "model.", lm_head outside


def test_permutation_roundtrip_and_layout():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of dim 8
    p = permute_qk(w, 2)
    np.testing.assert_array_equal(unpermute_qk(p, 2), w)
    # llama.cpp interleaves the two rotate-half halves of each head: rows 0, 4, 1, 5, 2, 6, 3, 7.
    np.testing.assert_array_equal(p[:8, 0], w[[0, 4, 1, 5, 2, 6, 3, 7], 0])
    with pytest.raises(GGUFError, match="even size"):
        unpermute_qk(np.zeros((6, 2), np.float32), 2)


@pytest.mark.parametrize("name", ["llama-tiny", "qwen2-tiny"])
def test_gguf_f32_roundtrip_exact(tmp_path, name):
    cfg = registry.get(name)[0]
    params = _params(cfg)
    path = write_gguf(tmp_path / "m.gguf", _hf_state(params, cfg), cfg.to_hf_dict(), "F32")
    ckpt = read_gguf(path)
    assert ckpt.architecture == cfg.model_type
    assert ckpt.hf_config["tie_word_embeddings"] == cfg.tie_word_embeddings
    assert ckpt.hf_config["attention_bias"] == cfg.attention_bias
    pre = load_llm(path)
    assert pre.config.num_key_value_heads == cfg.kv_heads and pre.config.rope_theta == cfg.rope_theta
    a, b = traverse_util.flatten_dict(params), traverse_util.flatten_dict(pre.params)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg="/".join(k))


def test_gguf_quantized_q8_0_close(tmp_path):
    cfg = registry.get("llama-tiny")[0]
    params = _params(cfg, seed=1)
    path = write_gguf(tmp_path / "q.gguf", _hf_state(params, cfg), cfg.to_hf_dict(), "Q8_0")
    ckpt = read_gguf(path)
    assert ckpt.tensor_types["model.layers.0.self_attn.q_proj.weight"] == "Q8_0"
    assert ckpt.tensor_types["model.norm.weight"] == "F32"
    pre = load_llm(path)
    ids = np.random.default_rng(0).integers(0, 256, (2, 7)).astype(np.int32)
    ref = LlmModel(cfg).apply({"params": params}, ids, return_logits=True).logits
    got = pre.model.apply({"params": pre.params}, ids, return_logits=True).logits
    # Q8_0 keeps ~2-3 significant digits per weight; a wrong Q/K un-permutation would be O(1) off.
    assert float(np.abs(np.asarray(ref) - np.asarray(got)).max()) < 0.05


def _minimal_writer(path, arch):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_context_length(32)
    w.add_vocab_size(10)
    return w


def _finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    w = _minimal_writer(tmp_path / "g.gguf", "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    _finish(w)
    with pytest.raises(GGUFError, match=r"architecture 'gpt2' is not supported.*llama"):
        read_gguf(tmp_path / "g.gguf")
    with pytest.raises(GGUFError, match="architecture 'gpt2'"):
        load_llm(tmp_path / "g.gguf")


def test_unsupported_tensor_type_is_a_clear_error(tmp_path):
    w = _minimal_writer(tmp_path / "t.gguf", "llama")
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.int32))  # I32: not a weight type
    _finish(w)
    with pytest.raises(GGUFError, match=r"token_embd\.weight \(I32\).*supported types"):
        read_gguf(tmp_path / "t.gguf")


def test_unknown_tensor_and_missing_file(tmp_path):
    w = _minimal_writer(tmp_path / "r.gguf", "llama")
    w.add_tensor("rope_freqs.weight", np.ones((2,), np.float32))
    _finish(w)
    with pytest.raises(GGUFError, match="rope_freqs"):
        read_gguf(tmp_path / "r.gguf")
    with pytest.raises(FileNotFoundError):
        read_gguf(tmp_path / "nope.gguf")


def test_tokenizer_vocab_mismatch_is_a_clear_error(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(300)}
    tk = Tokenizer(WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="w2")
    cfg = registry.get("llama-tiny")[0]  # vocab 256 < 300 tokens
    with pytest.raises(ValueError, match="tokenizer has 300 tokens but the model's vocab_size is 256"):
        load_llm_tokenizer(tmp_path, cfg, tok)
    ok = load_llm_tokenizer(tmp_path, cfg.replace(vocab_size=300), tok)
    assert ok.pad_token == "w2"  # missing pad token -> EOS
