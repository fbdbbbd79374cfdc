"""Hugging Face checkpoint conversion (``jaxbert.convert.hf``) against transformers itself.

* real weights: all-MiniLM-L6-v2 -> jaxbert -> export -> ``transformers.BertModel`` gives the
  same hidden states on real sentences; export -> jaxbert reload is bitwise identical;
* every task head round-trips both ways (jaxbert -> transformers and transformers -> jaxbert);
* sharded safetensors, head initialisation reports, error messages for bad directories;
* bfloat16 compute / storage on real weights, with a measured tolerance.
"""

from __future__ import annotations

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import flax.linen as nn
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jaxbert.convert.hf import CheckpointMismatchError, load_pretrained, read_safetensors, save_pretrained
from jaxbert.models.bert.model import BertConfig, BertModel
from jaxbert.models.task_models import build_task_model

SENTENCES_FILE = "rotten_tomatoes/validation.jsonl"
TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)
HF_TASK_CLASSES = {
    "base": transformers.BertModel,
    "mlm": transformers.BertForMaskedLM,
    "sequence_classification": transformers.BertForSequenceClassification,
    "token_classification": transformers.BertForTokenClassification,
    "question_answering": transformers.BertForQuestionAnswering,
}


# ----------------------------------------------------------------------------- helpers


def flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def assert_params_bitwise_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for path in fa:
        assert fa[path].dtype == fb[path].dtype, path
        assert fa[path].shape == fb[path].shape, path
        assert np.array_equal(fa[path], fb[path]), path


def random_params(model, seed: int = 0, scale: float = 0.05) -> dict:
    """Random params for ``model`` without compiling its initialisers (shapes from ``jax.eval_shape``).

    Every tensor is distinct: no zero biases or unit LayerNorm scales (a swapped or dropped bias
    would otherwise go unnoticed); LayerNorm scales are ``1 + noise``.
    """
    ids = np.zeros((1, 8), np.int32)
    abstract = traverse_util.flatten_dict(
        nn.unbox(jax.eval_shape(lambda r: model.init(r, ids), jax.random.key(0))["params"]), sep="/")
    rng = np.random.default_rng(seed)
    out = {path: (float(path.endswith("/scale")) + rng.normal(0, scale, a.shape)).astype(a.dtype)
           for path, a in abstract.items()}
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})


def random_batch(vocab: int, seed: int = 0, b: int = 3, l: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([l, l - 5, 4])[:b]
    mask = (np.arange(l)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, vocab, (b, l)).astype(np.int32) * mask
    types = (rng.integers(0, 2, (b, l)) * mask).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, batch):
    return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def run_jax(model, params, batch):
    """``model`` on a batch dict (jitted; compiled once per model and shapes)."""
    return _apply(model, params, batch)


def run_torch(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})


def max_diff(a, b, mask=None) -> float:
    """Max |a - b|; with ``mask [b, l]`` only over real (non-pad) token positions."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[np.asarray(mask, bool)], b[np.asarray(mask, bool)]
    return float(np.abs(a - b).max())


def tiny_jax_model(task: str, num_labels: int | None = None, seed: int = 0):
    config = BertConfig(**TINY)
    model = build_task_model(config, BertModel, task, num_labels)
    return model, random_params(model, seed)


# ----------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def sentence_batch(read_texts, minilm_tokenize):
    return minilm_tokenize(read_texts(SENTENCES_FILE, 16))


def test_minilm_export_matches_transformers_and_reloads_bitwise(minilm, minilm_dir, sentence_batch, tmp_path):
    assert not minilm.report.missing and not minilm.report.unexpected and not minilm.report.mismatched
    out_dir = save_pretrained(tmp_path / "export", minilm.params, minilm.config, task="base")

    # The exported tensors are the original checkpoint's, bit for bit (transposes/reshapes undone).
    original, exported = read_safetensors(minilm_dir), read_safetensors(out_dir)
    assert sorted(exported) == sorted(k for k in original if k != "embeddings.position_ids")
    for key, value in exported.items():
        assert value.dtype == np.float32 and np.array_equal(value, original[key]), key

    hf = transformers.BertModel.from_pretrained(out_dir)
    ref = run_torch(hf, sentence_batch)
    ours = run_jax(minilm.model, minilm.params, sentence_batch)
    mask = sentence_batch["attention_mask"]
    d_hidden = max_diff(ours.last_hidden_state, ref.last_hidden_state.numpy(), mask)
    d_pooled = max_diff(ours.pooler_output, ref.pooler_output.numpy())
    print(f"\nMiniLM export vs transformers.BertModel ({mask.sum()} tokens): "
          f"max|d last_hidden_state|={d_hidden:.2e} max|d pooler_output|={d_pooled:.2e}")
    assert d_hidden <= 1e-5 and d_pooled <= 1e-5

    reloaded = load_pretrained(out_dir)
    assert not reloaded.report.missing and not reloaded.report.unexpected
    assert reloaded.config == minilm.config
    assert_params_bitwise_equal(reloaded.params, minilm.params)


def test_minilm_for_sequence_classification_initialises_classifier(minilm_dir, minilm, sentence_batch):
    with pytest.raises(ValueError, match="num_labels"):
        load_pretrained(minilm_dir, task="sequence_classification")  # config.json has no labels
    pre = load_pretrained(minilm_dir, task="sequence_classification", num_labels=3)
    assert sorted(pre.report.initialized) == ["classifier/out/bias", "classifier/out/kernel"]
    assert pre.report.missing == [] and pre.report.unexpected == [] and pre.report.mismatched == []
    assert "embeddings.position_ids" in pre.report.ignored
    assert pre.params["classifier"]["out"]["kernel"].shape == (384, 3)
    assert_params_bitwise_equal(pre.params["encoder"], minilm.params)  # pooler included
    logits = run_jax(pre.model, pre.params, sentence_batch)["logits"]
    assert logits.shape == (16, 3) and np.isfinite(logits).all()


def test_minilm_for_mlm_ignores_pooler(minilm_dir, minilm):
    pre = load_pretrained(minilm_dir, task="mlm")
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(pre.report.ignored)
    assert pre.report.missing == [] and pre.report.unexpected == []
    assert "mlm_head/transform/kernel" in pre.report.initialized and "mlm_head/bias" in pre.report.initialized
    assert "pooler" not in pre.params["encoder"]
    expected = {k: v for k, v in minilm.params.items() if k != "pooler"}
    assert_params_bitwise_equal(pre.params["encoder"], expected)


# ----------------------------------------------------------------------------- task heads, both directions


HEAD_CASES = [("mlm", None), ("sequence_classification", 3), ("token_classification", 5), ("question_answering", None)]


def _compare_task_outputs(task, ours, ref, mask) -> dict[str, float]:
    if task == "mlm":
        return {"logits": max_diff(ours["logits"], ref.logits.numpy(), mask)}
    if task == "sequence_classification":
        return {"logits": max_diff(ours["logits"], ref.logits.numpy())}
    if task == "token_classification":
        return {"logits": max_diff(ours["logits"], ref.logits.numpy(), mask)}
    return {"start_logits": max_diff(ours["start_logits"], ref.start_logits.numpy(), mask),
            "end_logits": max_diff(ours["end_logits"], ref.end_logits.numpy(), mask)}


@pytest.mark.parametrize("task,num_labels", HEAD_CASES)
def test_jaxbert_head_exports_to_transformers(task, num_labels, tmp_path):
    model, params = tiny_jax_model(task, num_labels)
    id2label = {i: f"tag{i}" for i in range(num_labels)} if num_labels else None
    out_dir = save_pretrained(tmp_path / task, params, model.config, task=task, id2label=id2label)
    hf_config = json.loads((out_dir / "config.json").read_text())
    assert hf_config["architectures"] == [HF_TASK_CLASSES[task].__name__]
    hf = HF_TASK_CLASSES[task].from_pretrained(out_dir)
    if num_labels:
        assert hf.config.num_labels == num_labels
        assert hf.config.id2label == id2label

    batch = random_batch(TINY["vocab_size"], seed=1)
    diffs = _compare_task_outputs(task, run_jax(model, params, batch), run_torch(hf, batch), batch["attention_mask"])
    print(f"\njaxbert -> transformers {task}: " + " ".join(f"max|d {k}|={v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= 1e-5

    reloaded = load_pretrained(out_dir, task=task)
    assert reloaded.report.initialized == [] and reloaded.report.missing == []
    assert_params_bitwise_equal(reloaded.params, params)


@pytest.mark.parametrize("task,num_labels", HEAD_CASES)
def test_transformers_head_loads_into_jaxbert(task, num_labels, tmp_path):
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**TINY, num_labels=num_labels or 2)
    hf = HF_TASK_CLASSES[task](hf_config)
    with torch.no_grad():  # HF init leaves biases at 0 and LayerNorm at 1: make every tensor distinct
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / task)

    pre = load_pretrained(tmp_path / task, task=task)  # num_labels read from config.json
    assert pre.report.initialized == [] and pre.report.missing == [] and pre.report.unexpected == []
    batch = random_batch(TINY["vocab_size"], seed=2)
    diffs = _compare_task_outputs(task, run_jax(pre.model, pre.params, batch), run_torch(hf, batch),
                                  batch["attention_mask"])
    print(f"\ntransformers -> jaxbert {task}: " + " ".join(f"max|d {k}|={v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= 1e-5


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**TINY)).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "bf16")
    pre = load_pretrained(tmp_path / "bf16")
    kernel = pre.params["layer_0"]["mlp"]["wi"]["kernel"]
    assert kernel.dtype == np.float32
    expected = hf.encoder.layer[0].intermediate.dense.weight.detach().float().numpy().T
    assert np.array_equal(kernel, expected)


# ----------------------------------------------------------------------------- sharded checkpoints


def test_sharded_safetensors(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=2))
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (tmp_path / "sharded" / "model.safetensors").exists()

    single = load_pretrained(tmp_path / "single", task="sequence_classification")
    sharded = load_pretrained(tmp_path / "sharded", task="sequence_classification")
    assert_params_bitwise_equal(sharded.params, single.params)

    (tmp_path / "sharded" / shards[1]).unlink()
    with pytest.raises(FileNotFoundError, match=shards[1]):
        load_pretrained(tmp_path / "sharded", task="sequence_classification")

    # An index entry whose shard lacks the tensor.
    shutil.copytree(tmp_path / "single", tmp_path / "bad_index")
    (tmp_path / "bad_index" / "model.safetensors").rename(tmp_path / "bad_index" / "part.safetensors")
    keys = list(load_file(tmp_path / "bad_index" / "part.safetensors"))
    weight_map = {k: "part.safetensors" for k in keys} | {"bert.ghost.weight": "part.safetensors"}
    (tmp_path / "bad_index" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointMismatchError, match="bert.ghost.weight"):
        load_pretrained(tmp_path / "bad_index", task="sequence_classification")


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A valid tiny BertModel directory written by jaxbert, and its params."""
    model, params = tiny_jax_model("base")
    return save_pretrained(tmp_path_factory.mktemp("tiny") / "model", params, model.config), params


def _edit_copy(src, dst, edit):
    shutil.copytree(src, dst)
    state = dict(load_file(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        load_pretrained(tmp_path / "file")


def test_other_architecture_and_unknown_task(tiny_export, tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        load_pretrained(tmp_path / "gpt")
    with pytest.raises(ValueError, match="unknown task 'summarization'"):
        load_pretrained(tiny_export[0], task="summarization")


def test_pytorch_bin_only_directory(tiny_export, tmp_path):
    (tmp_path / "pt").mkdir()
    shutil.copy(tiny_export[0] / "config.json", tmp_path / "pt" / "config.json")
    torch.save({}, tmp_path / "pt" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*safetensors"):
        load_pretrained(tmp_path / "pt")


def test_missing_weight_names_jaxbert_path(tiny_export, tmp_path):
    bad = _edit_copy(tiny_export[0], tmp_path / "bad",
                     lambda s: s.pop("encoder.layer.1.attention.self.query.weight"))
    with pytest.raises(CheckpointMismatchError, match="layer_1/attention/query/kernel") as err:
        load_pretrained(bad)
    assert str(bad) in str(err.value) and "missing from checkpoint (1)" in str(err.value)


@pytest.mark.parametrize("key,shape,path,model_shape", [
    ("embeddings.token_type_embeddings.weight", (3, 32), "embeddings/token_type_embeddings/embedding", (2, 32)),
    # q/k/v are reshaped into heads: a wrong shape must be reported, not crash inside numpy.reshape
    ("encoder.layer.0.attention.self.query.weight", (33, 32), "layer_0/attention/query/kernel", (32, 4, 8)),
])
def test_wrong_shape_names_path_and_both_shapes(tiny_export, tmp_path, key, shape, path, model_shape):
    bad = _edit_copy(tiny_export[0], tmp_path / "bad", lambda s: s.__setitem__(key, np.ones(shape, np.float32)))
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(bad)
    msg = str(err.value)
    assert path in msg and str(shape) in msg and str(model_shape) in msg, msg


def test_unexpected_key_is_named(tiny_export, tmp_path):
    bad = _edit_copy(tiny_export[0], tmp_path / "bad",
                     lambda s: s.__setitem__("encoder.layer.0.foo.weight", np.ones(4, np.float32)))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected in checkpoint \(1\): encoder\.layer\.0\.foo\.weight"):
        load_pretrained(bad)


def test_non_strict_returns_report(tiny_export, tmp_path):
    def edit(s):
        s.pop("encoder.layer.1.attention.self.query.weight")
        s["embeddings.token_type_embeddings.weight"] = np.ones((3, 32), np.float32)
        s["encoder.layer.0.foo.weight"] = np.ones(4, np.float32)

    bad = _edit_copy(tiny_export[0], tmp_path / "bad", edit)
    pre = load_pretrained(bad, strict=False)
    assert pre.report.missing == ["layer_1/attention/query/kernel"]
    assert pre.report.unexpected == ["encoder.layer.0.foo.weight"]
    assert pre.report.mismatched == [("embeddings/token_type_embeddings/embedding", (3, 32), (2, 32))]
    # Everything that matched is loaded; the rest keeps its fresh initialisation.
    saved = flat(tiny_export[1])
    for path, value in flat(pre.params).items():
        if path in ("layer_1/attention/query/kernel", "embeddings/token_type_embeddings/embedding"):
            assert not np.array_equal(value, saved[path]), path
        else:
            assert np.array_equal(value, saved[path]), path
    out = run_jax(pre.model, pre.params, random_batch(TINY["vocab_size"]))
    assert np.isfinite(out.last_hidden_state).all()


# ----------------------------------------------------------------------------- bfloat16


def _mean_pool(hidden, mask):
    m = np.asarray(mask, np.float64)[..., None]
    return (np.asarray(hidden, np.float64) * m).sum(1) / m.sum(1)


def _cosine(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_minilm_bfloat16(minilm_dir, minilm, sentence_batch, tmp_path):
    mask = sentence_batch["attention_mask"]
    ref = run_jax(minilm.model, minilm.params, sentence_batch).last_hidden_state
    ref_pool = _mean_pool(ref, mask)

    # bf16 compute, f32 storage.
    bf = load_pretrained(minilm_dir, dtype="bfloat16")
    assert all(v.dtype == np.float32 for v in flat(bf.params).values())
    hidden = run_jax(bf.model, bf.params, sentence_batch).last_hidden_state
    assert hidden.dtype == jnp.bfloat16
    d_compute = max_diff(hidden, ref, mask)
    cos_compute = float(_cosine(_mean_pool(hidden, mask), ref_pool).min())

    # bf16 storage (and compute follows the config's dtype; here both bf16).
    bfp = load_pretrained(minilm_dir, dtype="bfloat16", param_dtype="bfloat16")
    assert all(v.dtype == jnp.bfloat16 for v in flat(bfp.params).values())
    hidden_p = run_jax(bfp.model, bfp.params, sentence_batch).last_hidden_state
    d_storage = max_diff(hidden_p, ref, mask)
    cos_storage = float(_cosine(_mean_pool(hidden_p, mask), ref_pool).min())
    print(f"\nMiniLM bf16 vs f32 over {mask.sum()} tokens (|ref| max {np.abs(np.asarray(ref)[mask.astype(bool)]).max():.2f}):"
          f"\n  dtype=bf16:                  max|d hidden|={d_compute:.3f} min mean-pool cosine={cos_compute:.5f}"
          f"\n  dtype=bf16 param_dtype=bf16: max|d hidden|={d_storage:.3f} min mean-pool cosine={cos_storage:.5f}")
    # Measured on CPU (jax 0.10.2, jitted, 16 rotten_tomatoes sentences, 403 tokens, |hidden| <= 6.0):
    #   dtype=bf16:                   max|d| 0.026, min mean-pool cosine 0.99996
    #   dtype=bf16, param_dtype=bf16: max|d| 0.040, min mean-pool cosine 0.99994
    # (un-jitted op-by-op execution gave 0.037 / 0.045, cosine >= 0.99991.)
    # Bounds leave ~3x (max|d|) and ~10x (1 - cosine) headroom for other backends' bf16 matmuls.
    assert cos_compute >= 0.999 and cos_storage >= 0.999
    assert d_compute <= 0.15 and d_storage <= 0.15

    # Exporting bf16-stored params writes float32 tensors holding the bf16 values exactly.
    out = save_pretrained(tmp_path / "bf16", bfp.params, bfp.config)
    state = read_safetensors(out)
    w = state["encoder.layer.0.intermediate.dense.weight"]
    assert w.dtype == np.float32
    assert np.array_equal(w, np.asarray(bfp.params["layer_0"]["mlp"]["wi"]["kernel"], np.float32).T)
