"""SentenceEncoder and pooling: parity with transformers / sentence-transformers on real MiniLM weights.

Measured values are printed (see them with ``pytest -s`` or ``-rA``) and repeated in assert messages.
"""

from __future__ import annotations

import json
import random

import jax
import numpy as np
import pytest

from jaxbert.inference.sentence_encoder import SentenceEncoder, length_buckets, row_buckets
from jaxbert.models.pooling import POOLING_MODES, pool, read_st_pooling


# Batches of 16 keep the padded work small on 2 CPU cores (texts are length-sorted into batches);
# the same batch size everywhere lets tests reuse compiled shapes.
BATCH = 16


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def texts(read_texts) -> list[str]:
    """64 real texts of mixed length: 40 movie-review snippets, 20 news paragraphs (a title line to
    ~200 words), 4 whole news articles (longer than MiniLM's max_seq_length 256: truncation).
    """
    reviews = read_texts("rotten_tomatoes/validation.jsonl", n=40)
    articles = read_texts("bbc_news/test.jsonl", n=34)
    paragraphs = [p for a in articles[:30] for p in a.split("\n\n")]
    return reviews + paragraphs[::8][:20] + articles[30:34]


@pytest.fixture(scope="module")
def encoder(minilm_dir) -> SentenceEncoder:
    return SentenceEncoder.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def st_embeddings(minilm_dir, texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir), device="cpu")
    return st.encode(texts, batch_size=BATCH, convert_to_numpy=True)


@pytest.fixture(scope="module")
def embeddings(encoder, texts) -> np.ndarray:
    return encoder.encode(texts, batch_size=BATCH)


# ----------------------------------------------------------------------------- parity


def test_backbone_matches_transformers_with_padding(minilm_dir, minilm_tokenize, texts):
    """jaxbert BertModel vs transformers.BertModel (torch fp32), padded batches, non-pad tokens only.

    Texts are length-sorted into 4 batches of 16, each right-padded to its longest member
    (up to 256 tokens after truncation), as an embedding pipeline batches them.
    """
    import torch
    import transformers

    from jaxbert.convert.hf import load_pretrained

    pre = load_pretrained(minilm_dir)
    apply = jax.jit(lambda p, ids, m, tt: pre.model.apply({"params": p}, ids, m, tt).last_hidden_state)
    ref_model = transformers.BertModel.from_pretrained(str(minilm_dir), dtype=torch.float32).eval()
    lengths = minilm_tokenize(texts, max_length=256)["attention_mask"].sum(1)
    by_len = np.argsort(-lengths, kind="stable")
    diff, n_tokens, n_pad = 0.0, 0, 0
    for start in range(0, len(texts), BATCH):
        batch = minilm_tokenize([texts[i] for i in by_len[start:start + BATCH]], max_length=256)
        ours = np.asarray(apply(pre.params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
        with torch.no_grad():
            ref = ref_model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})
        real = batch["attention_mask"].astype(bool)
        diff = max(diff, float(np.abs(ours - ref.last_hidden_state.numpy())[real].max()))
        n_tokens, n_pad = n_tokens + int(real.sum()), n_pad + int((~real).sum())
    assert lengths.max() == 256 and n_pad > 0  # truncated articles and padded batches
    print(f"\n[parity] BertModel last_hidden_state max|jax - torch| over {n_tokens} non-pad tokens "
          f"({n_pad} pad positions) of {len(texts)} texts: {diff:.3e}")
    assert diff <= 1e-4, f"max abs diff {diff:.3e} > 1e-4"


def test_embeddings_match_sentence_transformers(embeddings, st_embeddings, texts):
    assert embeddings.shape == st_embeddings.shape == (len(texts), 384)
    assert embeddings.dtype == np.float32
    cos = _cosine_rows(embeddings, st_embeddings)
    max_abs = float(np.abs(embeddings - st_embeddings).max())
    print(f"\n[parity] SentenceEncoder vs SentenceTransformer on {len(texts)} texts: "
          f"min cosine {cos.min():.8f}, max abs diff {max_abs:.3e}")
    assert cos.min() >= 0.99999, f"min cosine {cos.min():.8f} (text {int(cos.argmin())}), max abs {max_abs:.3e}"
    # modules.json has Normalize: unit vectors even without normalize_embeddings=True.
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_bfloat16_close_to_float32(minilm_dir, texts, embeddings):
    enc = SentenceEncoder.from_pretrained(minilm_dir, dtype="bfloat16")
    assert enc.config.dtype == "bfloat16"
    out = enc.encode(texts, batch_size=BATCH)
    assert out.dtype == np.float32 and out.shape == embeddings.shape and np.isfinite(out).all()
    cos = _cosine_rows(out, embeddings)
    print(f"\n[bfloat16] min cosine vs float32 over {len(texts)} texts: {cos.min():.6f} (mean {cos.mean():.6f})")
    # Measured (XLA CPU, jax 0.10.2, AMD EPYC): min 0.99998, mean 0.99999 -- bf16 activations with
    # float32 pooling + normalisation. 0.999 leaves room for other backends' bf16 matmul paths.
    assert cos.min() >= 0.999, f"bfloat16 min cosine {cos.min():.6f} < 0.999"


# ----------------------------------------------------------------------------- encode behaviour


def test_input_order_preserved(encoder, texts, embeddings):
    perm = list(range(len(texts) - 4))  # without the 4 long articles: cheaper, same logic
    random.Random(0).shuffle(perm)
    shuffled = encoder.encode([texts[i] for i in perm], batch_size=BATCH)
    np.testing.assert_allclose(shuffled, embeddings[perm], atol=1e-5)


def test_batch_size_independence(encoder, texts, embeddings):
    # 40 reviews in one partial batch (padded to 64 rows) vs the fixture's batches of 16.
    np.testing.assert_allclose(encoder.encode(texts[:40], batch_size=64), embeddings[:40], atol=1e-5)
    # 7 texts in batches of 3: 2 full batches + a partial batch of 1 (warmup compiles their shapes).
    shapes = encoder.warmup(texts[:56:8], batch_size=3)
    assert [r for r, _ in shapes][-1] == 1 and all(r == 3 for r, _ in shapes[:-1])
    assert [l for _, l in shapes] == sorted((l for _, l in shapes), reverse=True)
    np.testing.assert_allclose(encoder.encode(texts[:56:8], batch_size=3), embeddings[:56:8], atol=1e-5)


def test_single_string_returns_vector(encoder, texts, embeddings):
    vec = encoder.encode(texts[3])
    assert vec.shape == (encoder.dim,)
    np.testing.assert_allclose(vec, embeddings[3], atol=1e-5)


def test_encoder_properties(encoder):
    assert encoder.dim == 384
    assert encoder.max_length == 256  # sentence_bert_config.json max_seq_length
    assert encoder.pooling == "mean" and encoder.normalize
    assert not encoder.lowercase  # sentence_bert_config.json: do_lower_case false (tokenizer is uncased)
    assert encoder.config.hidden_size == 384
    assert "layer_5" in encoder.params


def test_plain_hf_directory(tmp_path, minilm_dir, texts, embeddings):
    """Without modules.json: mean pooling, no normalisation, max_length from the tokenizer (512)."""
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "vocab.txt", "special_tokens_map.json"):
        (tmp_path / name).symlink_to(minilm_dir / name)
    enc = SentenceEncoder.from_pretrained(tmp_path)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", False, 512)
    subset = texts[:8]  # short reviews: no truncation difference between 256 and 512
    raw = enc.encode(subset, batch_size=BATCH)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), embeddings[:8], atol=1e-5)
    np.testing.assert_allclose(enc.encode(subset, batch_size=BATCH, normalize_embeddings=True),
                               embeddings[:8], atol=1e-5)
    cls = SentenceEncoder.from_pretrained(tmp_path, pooling="cls", max_length=128)
    assert (cls.pooling, cls.max_length) == ("cls", 128)


# ----------------------------------------------------------------------------- errors


def test_empty_list_error(encoder):
    with pytest.raises(ValueError, match="texts is empty"):
        encoder.encode([])


def test_non_str_error_names_index(encoder):
    with pytest.raises(TypeError, match=r"texts\[2\] must be str, got int: 3"):
        encoder.encode(["a", "b", 3])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["a"], batch_size=0)


@pytest.mark.parametrize("texts,error,message", [
    (None, TypeError, r"texts must be a str or a list of str, got NoneType"),
    (b"hello", TypeError, r"texts must be a str or a list of str, got bytes; decode it first"),
    (["fine", b"bytes"], TypeError, r"texts\[1\] must be str, got bytes: b'bytes'; decode bytes first"),
    (("ok", None), TypeError, r"texts\[1\] must be str, got NoneType"),
    (42, TypeError, r"texts must be a str or a list of str, got int"),
    ("\ud800", ValueError, r"texts is not valid Unicode text: lone surrogate '\\ud800' at character 0"),
    (["ok", "a\udcffb"], ValueError, r"texts\[1\] is not valid Unicode text: lone surrogate '\\udcff' at character 1"),
    ((t for t in []), ValueError, r"texts is empty"),
])
def test_encode_input_types_one_message(encoder, texts, error, message):
    """Every bad input gets the one checker's message (jaxbert.data.tokenization.check_texts), not the
    tokenizer's internals; generators and tuples of str are fine."""
    with pytest.raises(error, match=message):
        encoder.encode(texts)


def test_encode_accepts_tuples_and_generators(encoder):
    ref = encoder.encode(["a cat", "a dog"])
    np.testing.assert_array_equal(encoder.encode(("a cat", "a dog")), ref)
    np.testing.assert_array_equal(encoder.encode(t for t in ["a cat", "a dog"]), ref)


def test_missing_directory_error(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        SentenceEncoder.from_pretrained(missing)


def test_option_validation(minilm_dir):
    with pytest.raises(TypeError, match="unknown option.*bidirectional"):
        SentenceEncoder.from_pretrained(minilm_dir, bidirectional=True)
    with pytest.raises(ValueError, match="dtype='float64'"):
        SentenceEncoder.from_pretrained(minilm_dir, dtype="float64")
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        SentenceEncoder.from_pretrained(minilm_dir, max_length=1024)
    with pytest.raises(ValueError, match="valid modes"):
        SentenceEncoder.from_pretrained(minilm_dir, pooling="sum")


def test_buckets():
    assert length_buckets(256) == [16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256]
    assert length_buckets(100) == [16, 32, 48, 64, 80, 96, 100]
    assert length_buckets(8) == [8]
    assert length_buckets(512)[-3:] == [448, 480, 512] and len(length_buckets(512)) == 20
    assert row_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert row_buckets(48) == [1, 2, 4, 8, 16, 32, 48]


# ----------------------------------------------------------------------------- pooling (pure functions)


# Two sequences of 4 tokens, embed 2. Row 0 right-padded (3 tokens), row 1 left-padded (2 tokens).
# Pad positions hold 1e6 so any leak of a pad token into a result is obvious.
P = 1e6
HIDDEN = np.array([[[1, 2], [3, -4], [5, 0], [P, P]],
                   [[P, P], [P, P], [2, 8], [-6, 4]]], np.float32)
MASK = np.array([[1, 1, 1, 0], [0, 0, 1, 1]], np.int32)


@pytest.mark.parametrize("mode, expected", [
    ("cls", [[1, 2], [2, 8]]),
    ("last", [[5, 0], [-6, 4]]),
    ("max", [[5, 2], [2, 8]]),
    ("mean", [[3, -2 / 3], [-2, 6]]),
    ("mean_sqrt_len", [[9 / np.sqrt(3), -2 / np.sqrt(3)], [-4 / np.sqrt(2), 12 / np.sqrt(2)]]),
    ("weightedmean", [[(1 + 6 + 15) / 6, (2 - 8 + 0) / 6], [(2 - 12) / 3, (8 + 8) / 3]]),
])
def test_pool_modes_left_and_right_padding(mode, expected):
    out = pool(HIDDEN, MASK, mode)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_allclose(np.asarray(out), np.array(expected, np.float32), rtol=1e-6)


def test_pool_bfloat16_input_and_tuple_mode():
    out = pool(HIDDEN[:, :3].astype(jax.numpy.bfloat16), MASK[:, :3], ("cls", "max"))
    assert out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_allclose(np.asarray(out)[0], [1, 2, 5, 2])


def test_pool_unknown_mode_lists_valid():
    with pytest.raises(ValueError) as e:
        pool(HIDDEN, MASK, "median")
    assert all(m in str(e.value) for m in POOLING_MODES)


def test_pool_matches_sentence_transformers_pooling():
    """Our pool vs sentence_transformers' Pooling module on random data with left and right padding."""
    import torch
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    rng = np.random.default_rng(0)
    h = rng.standard_normal((4, 7, 5)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 3 + [0] * 4, [0] * 5 + [1] * 2, [0] * 2 + [1] * 5], np.int64)
    names = {"cls": "cls", "max": "max", "mean": "mean", "mean_sqrt_len_tokens": "mean_sqrt_len",
             "weightedmean": "weightedmean", "lasttoken": "last"}
    for st_name, ours in names.items():
        feats = {"token_embeddings": torch.from_numpy(h), "attention_mask": torch.from_numpy(mask)}
        ref = Pooling(5, pooling_mode=st_name)(feats)["sentence_embedding"].numpy()
        np.testing.assert_allclose(np.asarray(pool(h, mask, ours)), ref, rtol=1e-5, atol=1e-6, err_msg=st_name)


def test_read_st_pooling(minilm_dir, tmp_path):
    assert read_st_pooling(minilm_dir) == ("mean", True, 256)

    def st_dir(name, pooling_cfg, extra_modules=()):
        d = tmp_path / name
        (d / "1_Pooling").mkdir(parents=True)
        (d / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg))
        mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                *extra_modules]
        (d / "modules.json").write_text(json.dumps(mods))
        return d

    # newer sentence-transformers: one ``pooling_mode`` string; no sentence_bert_config.json
    assert read_st_pooling(st_dir("new", {"embedding_dimension": 8, "pooling_mode": "lasttoken"})) == \
        ("last", False, None)
    # legacy flags, two set: concatenated in sentence-transformers' order (cls, max, mean, ...)
    legacy = {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": False}
    assert read_st_pooling(st_dir("legacy", legacy))[0] == ("cls", "mean")
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    with pytest.raises(NotImplementedError, match="Dense"):
        read_st_pooling(st_dir("dense", {"pooling_mode": "mean"}, [dense]))
    with pytest.raises(ValueError, match="not supported"):
        read_st_pooling(st_dir("bad", {"pooling_mode": "median"}))
