"""Sentence-transformers export: the directory loads in ``sentence_transformers`` and reproduces
jaxbert's embeddings (real MiniLM weights, and a random model with non-default pooling)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import flax.linen as nn

from jaxbert.convert.hf import load_pretrained
from jaxbert.convert.sentence_transformers import pooling_config, save_sentence_transformer
from jaxbert.data.tokenization import encode_batch, load_tokenizer
from jaxbert.inference.sentence_encoder import SentenceEncoder
from jaxbert.models import registry
from jaxbert.models.embedder import SentenceEmbedder

TEXTS = ["A man is eating food.", "A man is riding a white horse on an enclosed ground.",
         "Two dogs play in the snow", "x"]


@pytest.fixture(scope="module")
def st():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    return sentence_transformers


def test_minilm_export_reproduces_embeddings(st, minilm_dir, tmp_path):
    pre = load_pretrained(minilm_dir, task="base")
    tok = load_tokenizer(minilm_dir)
    out = save_sentence_transformer(tmp_path / "st", pre.params, pre.config, tok, pooling="mean", normalize=True,
                                    max_seq_length=256)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    ref = SentenceEncoder.from_pretrained(minilm_dir).encode(TEXTS)
    model = st.SentenceTransformer(str(out), device="cpu")
    got = model.encode(TEXTS, convert_to_numpy=True)
    diff = float(np.abs(got - ref).max())
    print(f"MiniLM export: max |ST(export) - jaxbert| = {diff:.2e}")
    assert diff < 1e-5
    back = SentenceEncoder.from_pretrained(out).encode(TEXTS)
    assert float(np.abs(back - ref).max()) < 1e-6


@pytest.mark.parametrize("pooling", ["cls", ("cls", "mean"), ("mean", "max")])
def test_random_model_export_with_other_pooling(st, minilm_dir, tmp_path, pooling):
    cfg, backbone = registry.get("bert-tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    modes = (pooling,) if isinstance(pooling, str) else pooling
    model = SentenceEmbedder(cfg, backbone, modes)
    tok = load_tokenizer(minilm_dir)
    enc = encode_batch(tok, TEXTS, max_length=32, pad_to="longest")
    params = nn.unbox(model.init(jax.random.key(1), enc["input_ids"], enc["attention_mask"],
                                 enc["token_type_ids"])["params"])
    ours = np.asarray(model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]))
    out = save_sentence_transformer(tmp_path / "st", params["encoder"], cfg, tok, pooling=modes, normalize=False,
                                    max_seq_length=32)
    got = st.SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert got.shape == ours.shape
    assert float(np.abs(got - ours).max()) < 1e-5


def test_pooling_config_and_errors(minilm_dir, tmp_path):
    assert pooling_config(["mean"], 8)["pooling_mode_mean_tokens"] is True
    assert pooling_config(["cls", "mean"], 8)["pooling_mode_cls_token"] is True  # legacy order cls, max, mean
    assert pooling_config(["mean", "cls"], 8)["pooling_mode"] == ["mean", "cls"]  # order kept
    cfg, _ = registry.get("bert-tiny")
    with pytest.raises(ValueError, match="needs the tokenizer"):
        save_sentence_transformer(tmp_path / "x", {}, cfg)
    with pytest.raises(ValueError, match="unknown pooling mode"):
        save_sentence_transformer(tmp_path / "x", {}, cfg, tokenizer_dir=minilm_dir, pooling="median")
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        save_sentence_transformer(tmp_path / "x", {}, cfg, tokenizer_dir=minilm_dir, max_seq_length=4096)
