"""``jaxbert.SentenceEncoder.from_pretrained`` on a tiny Llama HF directory (safetensors + tokenizer):
LLM dispatch, attention mode switch, poolings, instructions (embed mask), EOS appending, errors."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import flax.linen as nn

import jaxbert
from jaxbert.convert.hf import save_pretrained
from jaxbert.inference.llm_encoder import LlmSentenceEncoder
from jaxbert.inference import architecture_of
from jaxbert.models import registry
from jaxbert.models.llm.model import LlmModel

WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(200)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_llama")
    cfg = registry.get("llama-tiny", pad_token_id=0, bos_token_id=1, eos_token_id=2)[0]
    params = nn.unbox(LlmModel(cfg).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"])
    save_pretrained(path, params, cfg)
    tk = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.save_pretrained(path)
    return path


TEXTS = ["w1 w2 w3 w4 w5 w6", "w7 w8", "w9 w10 w11 w12"]


def test_dispatch_and_modes(model_dir):
    assert architecture_of(model_dir).kind == "decoder"
    bi = jaxbert.SentenceEncoder.from_pretrained(model_dir, pooling="mean", max_length=32)
    causal = jaxbert.SentenceEncoder.from_pretrained(model_dir, pooling="last_token", bidirectional=False,
                                                     max_length=32)
    assert isinstance(bi, LlmSentenceEncoder) and bi.bidirectional and not causal.bidirectional
    assert causal.add_eos and not bi.add_eos
    assert causal.tokenize(["w1 w2"])[0] == [5, 6, 2]  # EOS appended for last-token pooling
    e_bi, e_c = bi.encode(TEXTS), causal.encode(TEXTS)
    assert e_bi.shape == e_c.shape == (3, 64)
    # Each row equals encoding the text alone (padding and batch composition do not matter).
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(bi.encode(t), e_bi[i], atol=1e-5)
        np.testing.assert_allclose(causal.encode(t), e_c[i], atol=1e-5)
    # Last-token causal embedding = the final-norm state at the appended EOS, computed directly.
    ids = np.array([causal.tokenize([TEXTS[1]])[0]], np.int32)
    direct = causal.model.apply({"params": causal.params}, ids, attention_mode="causal").last_hidden_state[0, -1]
    np.testing.assert_allclose(e_c[1], np.asarray(direct), atol=1e-5)


def test_instruction_is_seen_but_not_pooled(model_dir):
    enc = jaxbert.SentenceEncoder.from_pretrained(model_dir, pooling="mean", max_length=32)
    plain = enc.encode(TEXTS)
    instr = enc.encode(TEXTS, instruction="w100 w101 w102")
    assert np.abs(instr - plain).max() > 1e-4  # the model saw the instruction (bidirectional)
    ids, skip = enc.tokenize_with_lengths(TEXTS, "w100 w101 w102")
    assert skip.tolist() == [3, 3, 3] and ids[1] == [104, 105, 106, 11, 12]
    # Manual: run the full sequence, mean over the text tokens only.
    out = enc.model.apply({"params": enc.params}, np.array([ids[1]], np.int32)).last_hidden_state[0]
    np.testing.assert_allclose(instr[1], np.asarray(out[3:]).mean(0), atol=1e-5)
    per_text = enc.encode(TEXTS, instruction=["w100", "", "w100 w101"])
    assert per_text.shape == (3, 64)
    np.testing.assert_allclose(per_text[1], plain[1], atol=1e-5)  # empty instruction = none


def test_errors(model_dir):
    with pytest.raises(ValueError, match="unknown LLM pooling 'average'"):
        jaxbert.SentenceEncoder.from_pretrained(model_dir, pooling="average")
    with pytest.raises(TypeError, match="unknown option"):
        jaxbert.SentenceEncoder.from_pretrained(model_dir, unpad=True)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        jaxbert.SentenceEncoder.from_pretrained(model_dir, max_length=100000)
    enc = jaxbert.SentenceEncoder.from_pretrained(model_dir, max_length=4)
    with pytest.raises(ValueError, match="no room"):
        enc.encode(["w1"], instruction="w1 w2 w3 w4")


def test_shared_checks_with_the_bert_encoder(model_dir, tmp_path):
    """The LLM encoder uses the base class's option, max_length and text checks (one place for both)."""
    import shutil

    with pytest.raises(TypeError, match=r"LlmSentenceEncoder.from_pretrained got unknown option\(s\) \['unpad'\]; "
                                        r"known: \['add_eos', 'attention_implementation', 'bidirectional'"):
        jaxbert.SentenceEncoder.from_pretrained(model_dir, unpad=True)
    with pytest.raises(ValueError, match=r"dtype='float16'; expected one of \('float32', 'bfloat16'\)"):
        jaxbert.SentenceEncoder.from_pretrained(model_dir, dtype="float16")
    with pytest.raises(ValueError, match="max_length must be an int >= 2, got 1"):
        jaxbert.SentenceEncoder.from_pretrained(model_dir, max_length=1)
    enc = jaxbert.SentenceEncoder.from_pretrained(model_dir, max_length=16)
    with pytest.raises(TypeError, match="texts must be a str or a list of str, got NoneType"):
        enc.encode(None)
    with pytest.raises(ValueError, match=r"texts\[0\] is not valid Unicode text: lone surrogate"):
        enc.encode(["w1 \ud800"])
    # A checkpoint directory without its tokenizer files is refused, naming the files expected.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer files: expected tokenizer\.json"):
        jaxbert.SentenceEncoder.from_pretrained(bare)
