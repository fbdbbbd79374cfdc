"""Adapters, prefix and prompt tuning through the extension seam; adapter-only checkpoints.

Zero-initialised adapters, a zero-length prefix and a zero-length prompt reproduce the base
model's outputs; an adapter checkpoint restores the same predictions on the base weights and
refuses a different base with the mismatching shapes named.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import peft
from jaxbert.models import build_task_model, registry
from jaxbert.peft import PeftError, flatten, unflatten
from jaxbert.peft.checkpoint import load_adapter, save_adapter

from _configs import peft_config

SAMPLE = {"input_ids": np.array([[101, 7, 8, 9, 10, 102, 0, 0], [101, 11, 12, 102, 0, 0, 0, 0]], np.int32),
          "attention_mask": np.array([[1] * 6 + [0] * 2, [1] * 4 + [0] * 4], np.int32)}


def _tiny(**overrides):
    cfg, bb = registry.get("bert-tiny", vocab_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           **overrides)
    model = build_task_model(cfg, bb, "sequence_classification", 3)
    params = nn.unbox(model.init(jax.random.key(0), **SAMPLE)["params"])  # eager: cheaper than compiling
    return cfg, model, params


@pytest.fixture(scope="module")
def tiny():
    cfg, model, params = _tiny()
    return cfg, model, params, model.apply({"params": params}, **SAMPLE)["logits"]


def _attach(tiny, name, **opts):
    cfg, model, params = tiny[:3]
    att = peft.attach(model, peft.build(peft_config(name, **opts), cfg), params, SAMPLE, seed=0)
    return att.model, att.params


def _randomize(params, method, seed=5, std=0.3):
    flat = flatten(params)
    for i, p in enumerate(sorted(flat)):
        if method.is_trainable(p):
            flat[p] = flat[p] + std * jax.random.normal(jax.random.key(seed + i), flat[p].shape)
    return unflatten(flat)


@pytest.mark.parametrize("name,opts,expect", [
    ("houlsby", {}, {"adapter_attention", "adapter_mlp"}),
    ("pfeiffer", {}, {"adapter_mlp"}),
    ("prefix", {"length": 0}, {"prefix"}),
    ("prompt", {"length": 0}, {"soft_prompt"}),
])
def test_identity_at_init(tiny, name, opts, expect):
    pm, params = _attach(tiny, name, **opts)
    out = pm.apply({"params": params}, **SAMPLE)["logits"]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(tiny[3]))
    added = {seg for p in flatten(params) if pm.method.is_peft_path(p) for seg in p.split("/") if seg in expect}
    assert added == expect
    if name in ("houlsby", "pfeiffer"):  # near-identity: the up-projection is zero
        ups = [v for p, v in flatten(params).items() if p.endswith("/up/kernel")]
        assert ups and not any(np.any(np.asarray(u)) for u in ups)


def test_adapter_layout_and_trainability(tiny):
    pm, params = _attach(tiny, "houlsby", bottleneck=16, train_layer_norms=True)
    flat = flatten(params)
    assert flat["encoder/layer_1/adapter_attention/down/kernel"].shape == (128, 16)
    assert flat["encoder/layer_1/adapter_mlp/up/kernel"].shape == (16, 128)
    labels = flatten(pm.method.labels(params))
    assert labels["encoder/layer_0/attention_norm/scale"] == "peft"
    assert labels["encoder/layer_0/attention/query/kernel"] == "frozen"
    assert labels["classifier/out/kernel"] == "peft"
    with pytest.raises(PeftError, match="cannot be merged"):
        pm.merge(params)


def test_prefix_changes_attention_and_reparameterisation(tiny):
    pm, params = _attach(tiny, "prefix", length=4)
    flat = flatten(params)
    assert flat["encoder/layer_0/prefix/key"].shape == (4, 2, 64)
    out = pm.apply({"params": _randomize(params, pm.method)}, **SAMPLE)["logits"]
    assert float(jnp.abs(out - tiny[3]).max()) > 1e-4
    pm2, params2 = _attach(tiny, "prefix", length=4, reparameterize=True, mlp_hidden=32)
    flat2 = flatten(params2)
    assert "encoder/layer_0/prefix/key" not in flat2  # produced by the MLP, not stored
    assert flat2["prefix_encoder/dense_out/kernel"].shape == (32, 2 * 2 * 2 * 64)
    mat = flatten(pm2.method.materialize(params2))
    assert mat["encoder/layer_1/prefix/value"].shape == (4, 2, 64)
    assert np.isfinite(np.asarray(pm2.apply({"params": params2}, **SAMPLE)["logits"])).all()


def test_prompt_init_from_text_is_the_embedded_text(tiny):
    cfg, model, base, _ = tiny
    pc = peft.default_config()
    pc.method = "prompt"
    pc.prompt.length, pc.prompt.init_from, pc.prompt.init_text = 5, "text", "two words"

    class Tok:  # a stand-in tokenizer: "two words" -> [7, 8]
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [7, 8]}

    method = peft.build(pc, cfg, tokenizer=Tok())
    assert method.init_token_ids == (7, 8)
    att = peft.attach(model, method, base, SAMPLE)
    prompt = np.asarray(flatten(att.params)["encoder/soft_prompt/embedding"])
    # What the embeddings module produces for tokens 7, 8, 7, 8, 7 at positions 1..5:
    from jaxbert.models.bert.model import BertEmbeddings
    ids = np.array([[7, 8, 7, 8, 7]], np.int32)
    ref = BertEmbeddings(cfg).apply({"params": base["encoder"]["embeddings"]}, ids, np.zeros_like(ids),
                                    np.arange(1, 6, dtype=np.int32)[None])
    np.testing.assert_allclose(prompt, np.asarray(ref[0]), atol=1e-5)
    # After-CLS insertion: the classifier still reads [CLS]; the sequence is 5 tokens longer.
    # (The full last layer: with the first-token shortcut the classifier model returns token 0 only.)
    full = att.model.model.clone(config=att.model.model.config.replace(first_token_shortcut=False))
    out = full.apply({"params": att.params}, **SAMPLE)["last_hidden_state"]
    assert out.shape[1] == SAMPLE["input_ids"].shape[1] + 5
    shortcut = att.model.model.apply({"params": att.params}, **SAMPLE)
    np.testing.assert_allclose(np.asarray(shortcut["last_hidden_state"][:, 0]), np.asarray(out[:, 0]), atol=1e-5)
    with pytest.raises(PeftError, match="needs a tokenizer"):
        peft.build(pc, cfg)


@pytest.mark.parametrize("name,opts", [("lora", {"rank": 4}), ("houlsby", {"bottleneck": 8}),
                                       ("prefix", {"length": 3, "reparameterize": True, "mlp_hidden": 16}),
                                       ("bitfit", {}), ("dsee", {"rank": 2, "num_sparse": 8, "prune_sparsity": 0.2})])
def test_adapter_checkpoint_restores_predictions(tiny, tmp_path, name, opts):
    cfg, model, base, _ = tiny
    pm, params = _attach(tiny, name, **opts)
    trained = _randomize(params, pm.method)
    if name == "dsee":
        trained = pm.method.prune(trained)
    want = pm.apply({"params": trained}, **SAMPLE)["logits"]
    info = save_adapter(tmp_path / "adapter", trained, pm.method)
    files = sorted(p.name for p in info.path.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert info.size_bytes == sum(p.stat().st_size for p in info.path.iterdir())
    full = sum(np.asarray(v).nbytes for v in flatten(trained).values())
    assert info.size_bytes < full / 4  # a small file: no frozen base weights inside
    saved = json.loads((info.path / "adapter_config.json").read_text())
    assert saved["peft"]["method"] == name
    pm2, restored = load_adapter(info.path, model, base, SAMPLE)
    got = pm2.apply({"params": restored}, **SAMPLE)["logits"]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not list(tmp_path.glob(".adapter*"))  # no temporary leftovers


def test_adapter_checkpoint_on_a_different_base_names_the_mismatch(tiny, tmp_path):
    cfg, model, base, _ = tiny
    pm, params = _attach(tiny, "lora", rank=4)
    info = save_adapter(tmp_path / "adapter", params, pm.method)
    cfg2, model2, base2 = _tiny(hidden_size=64, intermediate_size=256)
    with pytest.raises(PeftError) as e:
        load_adapter(info.path, model2, base2, SAMPLE)
    msg = str(e.value)
    assert "does not fit this base model" in msg and "hidden_size" in msg
    assert "encoder/layer_0/attention/query/kernel: adapter made for shape (128, 2, 64), this base has (64, 2, 32)" in msg
    assert "encoder/layer_0/attention/query/lora_a: adapter shape (128, 4) vs this base model (64, 4)" in msg
    with pytest.raises(FileNotFoundError, match="not a jaxbert adapter directory"):
        load_adapter(tmp_path / "nowhere", model, base, SAMPLE)
