"""Strict loading catches checkpoints that are shape-compatible but wrong for their config, and model
directories whose tokenizer is missing or does not belong to the weights.

* a real MiniLM (6 layers) whose ``config.json`` says 4 layers: refused, naming the extra layers
  compactly and the likely cause; ``strict=False`` loads and reports them;
* a Qwen2 checkpoint whose config turns the q/k/v biases off: the biases are refused (not dropped);
* what stays ignored: the pooler when the model has none, ``position_ids`` buffers, other tasks' heads;
* a MiniLM directory without tokenizer files: ``SentenceEncoder`` and the tasks' tokenizer loader
  refuse it, naming the files expected; a tokenizer much smaller than ``vocab_size`` is refused,
  a table padded to a multiple of 64 is not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import flax.linen as nn
from safetensors.numpy import load_file, save_file

from jaxbert.convert.hf import CheckpointMismatchError, load_pretrained, save_pretrained
from jaxbert.convert.report import compact_keys
from jaxbert.data.tokenization import check_vocab, load_tokenizer, train_tokenizer
from jaxbert.inference.sentence_encoder import SentenceEncoder
from jaxbert.models import registry
from jaxbert.models.llm.model import LlmModel
from jaxbert.tasks.base import Task

MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _linked_copy(src: Path, dst: Path, *, config_edit=None, tokenizer: bool = True) -> Path:
    """``dst`` with ``src``'s weights (a symlink: no 90 MB copy), its config (edited) and tokenizer files."""
    dst.mkdir()
    os.symlink(src / "model.safetensors", dst / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    if config_edit:
        cfg.update(config_edit)
    (dst / "config.json").write_text(json.dumps(cfg))
    if tokenizer:
        for name in MINILM_TOKENIZER_FILES:
            if (src / name).is_file():
                os.symlink(src / name, dst / name)
    return dst


# ----------------------------------------------------------------------------- keys with no place


def test_fewer_layers_in_config_than_in_weights_is_refused(minilm_dir, tmp_path):
    bad = _linked_copy(minilm_dir, tmp_path / "four_layers", config_edit={"num_hidden_layers": 4})
    extra = sorted(k for k in load_file(minilm_dir / "model.safetensors")
                   if k.startswith(("encoder.layer.4.", "encoder.layer.5.")))
    assert len(extra) == 32  # 16 tensors per BERT layer
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(bad)
    msg = str(err.value)
    print(f"\n4-layer config over 6-layer MiniLM: {msg}")
    assert str(bad) in msg
    assert "no place in the model (32): encoder.layer.4-5.* (32 tensors)" in msg, msg
    assert "num_hidden_layers=4 but the weights have 6 layers" in msg, msg
    with pytest.raises(CheckpointMismatchError, match="num_hidden_layers=4"):
        SentenceEncoder.from_pretrained(bad)

    loose = load_pretrained(bad, strict=False)
    assert sorted(loose.report.unplaced) == extra
    assert not loose.report.missing and not loose.report.unexpected and not loose.report.mismatched
    assert loose.config.num_hidden_layers == 4


def test_a_bias_the_config_turns_off_is_refused(tmp_path):
    cfg = registry.get("qwen2-tiny")[0]
    assert cfg.attention_bias
    model = LlmModel(cfg)
    shapes = nn.unbox(jax.eval_shape(lambda r: model.init(r, np.zeros((1, 4), np.int32)), jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), shapes["params"])
    out = save_pretrained(tmp_path / "qwen", params, cfg)
    assert load_pretrained(out).report.unplaced == []
    hf = json.loads((out / "config.json").read_text())
    hf["attention_bias"] = False
    (out / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(out)
    msg = str(err.value)
    # 2 layers x q/k/v biases
    assert "no place in the model (6): model.layers.0-1.* (6 tensors)" in msg, msg
    assert "the config leaves out parameters the weights have" in msg and "attention/query/bias" in msg, msg
    assert "num_hidden_layers" not in msg


def test_what_stays_ignored(minilm_dir, tmp_path):
    # A model built without a pooler (as SentenceEncoder loads MiniLM): the checkpoint's pooler is ignored.
    no_pooler = load_pretrained(minilm_dir, add_pooling_layer=False)
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(no_pooler.report.ignored)
    assert no_pooler.report.unplaced == []
    # Buffers and heads of other tasks (MLM transform, NSP) next to a bare encoder's weights.
    extra = {"embeddings.position_ids": np.arange(512, dtype=np.int64)[None],
             "cls.seq_relationship.weight": np.ones((2, 384), np.float32),
             "cls.seq_relationship.bias": np.ones((2,), np.float32),
             "cls.predictions.transform.dense.weight": np.ones((384, 384), np.float32),
             "cls.predictions.decoder.weight": np.ones((30522, 4), np.float32)}
    other = _linked_copy(minilm_dir, tmp_path / "with_heads")
    os.remove(other / "model.safetensors")
    save_file({**load_file(minilm_dir / "model.safetensors"), **extra}, str(other / "model.safetensors"))
    pre = load_pretrained(other)
    assert set(extra) <= set(pre.report.ignored)
    assert pre.report.unplaced == [] and pre.report.unexpected == []


def test_compact_keys():
    keys = [f"bert.encoder.layer.{i}.output.dense.{w}" for i in (4, 5, 7) for w in ("weight", "bias")]
    assert compact_keys(keys + ["pooler.dense.weight"]) == \
        "bert.encoder.layer.4-5,7.* (6 tensors), pooler.dense.weight"


# ----------------------------------------------------------------------------- tokenizers


def _task_config(tokenizer=None) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": {"tokenizer": tokenizer}})


def test_directory_without_tokenizer_is_refused(minilm_dir, tmp_path):
    bare = _linked_copy(minilm_dir, tmp_path / "no_tokenizer", tokenizer=False)
    expected = r"no tokenizer files: expected tokenizer\.json .*vocab\.txt .*vocab\.json \+ merges\.txt"
    with pytest.raises(FileNotFoundError, match=expected) as err:
        SentenceEncoder.from_pretrained(bare)
    assert str(bare) in str(err.value) and "config.json" in str(err.value)  # the files found are listed
    with pytest.raises(FileNotFoundError, match=expected):
        Task().load_task_tokenizer(_task_config(), bare, 30522)
    # The same directory with its tokenizer loads, and two unrelated texts are not the same vector.
    full = _linked_copy(minilm_dir, tmp_path / "with_tokenizer")
    enc = SentenceEncoder.from_pretrained(full)
    a, b = enc.encode(["hello world", "stock market"])
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos < 0.5, cos


@pytest.fixture(scope="module")
def small_tokenizer_dir(tmp_path_factory):
    """A 64-token WordPiece tokenizer (trained on a few sentences)."""
    texts = ["the cat sat on the mat", "a dog ran in the park", "stock markets fell on monday"] * 4
    out = train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=64, multiple_of=64,
                          min_frequency=1)
    assert len(load_tokenizer(out)) == 64
    return out


def test_tokenizer_much_smaller_than_vocab_is_refused(minilm_dir, small_tokenizer_dir, tmp_path):
    odd = _linked_copy(minilm_dir, tmp_path / "odd", tokenizer=False)
    for name in os.listdir(small_tokenizer_dir):
        os.symlink(small_tokenizer_dir / name, odd / name)
    with pytest.raises(ValueError, match=r"\(64 ids, .*odd\) is much smaller than the model's vocab_size=30522"):
        SentenceEncoder.from_pretrained(odd)
    with pytest.raises(ValueError, match="much smaller"):
        Task().load_task_tokenizer(_task_config(), odd, 30522)
    # A randomly initialised model (no model directory) may have a larger table than its tokenizer.
    tok = Task().load_task_tokenizer(_task_config(str(small_tokenizer_dir)), None, 30522)
    assert len(tok) == 64


def test_padded_vocabulary_passes(small_tokenizer_dir):
    tok = load_tokenizer(small_tokenizer_dir)
    assert check_vocab(tok, 64, pretrained=True) == 64
    assert check_vocab(tok, 128, pretrained=True) == 64  # padded to a multiple of 64
    assert check_vocab(tok, 192, pretrained=True) == 64  # 128 unused rows: the slack
    with pytest.raises(ValueError, match="much smaller"):
        check_vocab(tok, 193, pretrained=True)
    assert check_vocab(tok, 30522) == 64  # not pretrained: a random table may be larger
    with pytest.raises(ValueError, match="tokenizer has 64 tokens but the model's vocab_size is 32"):
        check_vocab(tok, 32)
