"""M2-BERT export / import in the reference's key names (``jaxbert/models/m2/hf.py`` through ``convert/hf.py``).

Oracles: the export -> import round trip (identical parameters and outputs), the torch
transcription of the reference forward from ``test_m2.py`` run on the *exported* state dict
(the file really is in the reference's names and layouts), a reference-style state dict +
reference-style ``config.json`` read through ``load_pretrained`` against ``params_from_reference``.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax import traverse_util

from jaxbert.convert import hf as hf_convert
from jaxbert.models.m2 import hf as m2_convert
from jaxbert.models.m2 import model as m2
from jaxbert.models.task_models import build_task_model


def _cfg(**kw) -> m2.M2Config:
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, intermediate_size=32, max_position_embeddings=32,
                hyena_filter_order=8, hidden_dropout_prob=0.0)
    base.update(kw)
    return m2.M2Config(**base)


def _task_params(cfg, task, seed=0, **kw):
    model = build_task_model(cfg, m2.M2Model, task, kw.get("num_labels"))
    ids = jnp.ones((1, 8), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(seed), ids)["params"])
    # perturb so that no two parameters (nor a parameter and its init) coincide by construction
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(tree, leaves)


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


class _Tok:
    """Stands in for an HF tokenizer: ``save_pretrained(dir)`` writes a file."""

    def save_pretrained(self, path):
        from pathlib import Path
        (Path(path) / "tokenizer.json").write_text("{}")


@pytest.mark.parametrize("task", ["mlm", "base", "sequence_classification"])
def test_export_import_round_trip_identical_params_and_outputs(tmp_path, task):
    cfg = _cfg(add_pooling_layer=task != "mlm")
    model, params = _task_params(cfg, task, num_labels=3)
    out_dir = hf_convert.save_pretrained(tmp_path / "m2", params, cfg, task=task, tokenizer=_Tok())
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left
    hf_cfg = json.loads((out_dir / "config.json").read_text())
    assert hf_cfg["model_type"] == "m2_bert" and hf_cfg["monarch_mixer_sequence_mixing"]
    assert hf_cfg["long_conv_l_max"] == cfg.filter_l_max
    pre = hf_convert.load_pretrained(out_dir, task=task, num_labels=3, add_pooling_layer=task != "mlm",
                                     hidden_dropout_prob=0.0)
    assert pre.config == cfg.replace(long_conv_l_max=cfg.filter_l_max)
    assert not pre.report.missing and not pre.report.unexpected and not pre.report.mismatched
    assert not pre.report.initialized
    a, b = _flat(params), _flat(pre.params)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 11)), jnp.int32)
    mask = jnp.ones((2, 11), jnp.int32).at[1, 7:].set(0)
    y1 = model.apply({"params": params}, ids, mask)
    y2 = pre.model.apply({"params": pre.params}, ids, mask)
    for x1, x2 in zip(jax.tree.leaves(y1), jax.tree.leaves(y2)):
        assert np.array_equal(np.asarray(x1), np.asarray(x2))


def test_export_is_the_reference_state_dict(tmp_path):
    """Every key the reference's ``BertForMaskedLM`` has (buffers, shared ``freq`` copies, the tied decoder)
    and nothing else but the pooler; the reference forward on the exported tensors gives jaxbert's outputs."""
    pytest.importorskip("torch")
    from safetensors.numpy import load_file
    from test_m2 import _reference_forward, _reference_state_dict

    cfg = _cfg()
    model, params = _task_params(cfg, "base")
    out_dir = hf_convert.save_pretrained(tmp_path / "m2", {"encoder": params, "mlm_head": _task_params(
        cfg.replace(add_pooling_layer=False), "mlm")[1]["mlm_head"]}, cfg, task="mlm")
    sd = load_file(str(out_dir / "model.safetensors"))
    ref_keys = set(_reference_state_dict(cfg, np.random.default_rng(0)))
    ref_keys |= {f"bert.encoder.layer.{i}.attention.{f}.{b}" for i in range(2) for f in ("filter_fn", "filter_fn2")
                 for b in ("pos_emb.t", "modulation.deltas")}
    ref_keys |= {"bert.embeddings.position_ids", "cls.predictions.transform.dense.weight",
                 "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
                 "cls.predictions.transform.LayerNorm.bias", "cls.predictions.decoder.weight",
                 "cls.predictions.decoder.bias"}
    assert set(sd) == ref_keys
    assert sd["bert.encoder.layer.0.attention.filter_fn.pos_emb.z"].shape == (1, cfg.filter_l_max, cfg.hyena_emb_dim)
    assert sd["bert.encoder.layer.1.attention.filter_fn2.modulation.deltas"].shape == (1, 1, cfg.hidden_size)
    np.testing.assert_array_equal(sd["cls.predictions.decoder.weight"], sd["bert.embeddings.word_embeddings.weight"])
    ids = np.random.default_rng(1).integers(1, 50, (2, 20)).astype(np.int32)
    ref_h, ref_pooled = _reference_forward(sd, cfg, ids)
    out = model.apply({"params": params}, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(out.last_hidden_state), ref_h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.pooler_output), ref_pooled, rtol=1e-4, atol=1e-4)


def _reference_dir(tmp_path, cfg, sd, name="ref"):
    """A directory as the reference's training code leaves it: reference config.json (model_type "bert")."""
    from safetensors.numpy import save_file

    path = tmp_path / name
    path.mkdir()
    save_file(sd, str(path / "model.safetensors"))
    hf = {"model_type": "bert", "monarch_mixer_sequence_mixing": True, "use_positional_encodings": True,
          "use_monarch_mlp": True, "residual_long_conv": True, "bidirectional": True, "use_glu_mlp": True,
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
          "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
          "long_conv_l_max": cfg.filter_l_max, "hyena_w": 10, "hyena_emb_dim": 5, "hyena_filter_order": 8,
          "hidden_dropout_prob": 0.0, "num_attention_heads": 12, "alibi_starting_size": 512}
    (path / "config.json").write_text(json.dumps(hf))
    return path


def test_reference_checkpoint_loads_like_params_from_reference(tmp_path):
    from test_m2 import _reference_state_dict

    cfg = _cfg()
    sd = _reference_state_dict(cfg, np.random.default_rng(0))
    want, _ = m2.params_from_reference(sd, cfg)
    pre = hf_convert.load_pretrained(_reference_dir(tmp_path, cfg, sd), task="base")
    assert isinstance(pre.config, m2.M2Config) and pre.config.hyena_w == 10
    assert any("pos_emb.z - computed| = 0.00e+00" in n for n in pre.report.adapted), pre.report.adapted
    a, b = _flat(want), _flat(pre.params)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_import_errors_name_the_bad_key(tmp_path):
    from test_m2 import _reference_state_dict

    cfg = _cfg()
    sd = _reference_state_dict(cfg, np.random.default_rng(0))
    bad = dict(sd)
    bad["bert.encoder.layer.1.attention.filter_fn2.implicit_filter_rev.3.freq"] = bad[
        "bert.encoder.layer.1.attention.filter_fn2.implicit_filter_rev.3.freq"] + 1.0
    with pytest.raises(hf_convert.CheckpointMismatchError, match=r"filter_fn2\.implicit_filter_rev\.3\.freq"):
        hf_convert.load_pretrained(_reference_dir(tmp_path, cfg, bad), task="base")
    missing = {k: v for k, v in sd.items() if k != "bert.encoder.layer.1.attention.short_filter.weight"}
    with pytest.raises(hf_convert.CheckpointMismatchError, match=r"layer_1/mixer/short_conv/kernel"):
        hf_convert.load_pretrained(_reference_dir(tmp_path, cfg, missing, "b"), task="base")
    shape = dict(sd)
    shape["bert.encoder.layer.0.mlp.wo.bias"] = np.zeros(7, np.float32)
    with pytest.raises(hf_convert.CheckpointMismatchError, match=r"layer_0/mlp/wo/bias: checkpoint \(7,\)"):
        hf_convert.load_pretrained(_reference_dir(tmp_path, cfg, shape, "c"), task="base")
    with pytest.raises(ValueError, match="hyena_num_inner_mlps"):
        m2_convert.export_extras({}, cfg.replace(hyena_num_inner_mlps=3))
    hf = cfg.to_hf_dict()
    del hf["long_conv_l_max"]
    with pytest.raises(ValueError, match="long_conv_l_max"):
        m2.M2Config.from_hf_dict(hf)


def test_longer_position_table_is_tiled_and_reported(tmp_path, caplog):
    cfg = _cfg(max_position_embeddings=16, long_conv_l_max=16)
    _, params = _task_params(cfg, "base")
    out_dir = hf_convert.save_pretrained(tmp_path / "m2", params, cfg)
    pre = hf_convert.load_pretrained(out_dir, task="base", max_position_embeddings=40)
    assert pre.config.max_position_embeddings == 40 and pre.config.filter_l_max == 16
    table = np.asarray(pre.params["embeddings"]["position_embeddings"]["embedding"])
    src = np.asarray(params["embeddings"]["position_embeddings"]["embedding"])
    assert table.shape == (40, cfg.hidden_size)
    np.testing.assert_array_equal(table, src[np.arange(40) % 16])
    assert "row p = row p mod 16" in caplog.text
    assert any("row p = row p mod 16" in n for n in pre.report.adapted)
    # the first 16 positions see exactly the same model
    ids = jnp.asarray(np.random.default_rng(2).integers(1, 50, (1, 16)), jnp.int32)
    a = m2.M2Model(cfg).apply({"params": params}, ids).last_hidden_state
    b = pre.model.apply({"params": pre.params}, ids).last_hidden_state
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_retrieval_config_starts_from_an_export(tmp_path, monkeypatch, data_dir):
    from experiments.configs import m2_retrieval

    monkeypatch.setenv("JAXBERT_CACHE", str(tmp_path))
    monkeypatch.setenv("JAXBERT_DATA", str(data_dir))
    c = m2_retrieval.get_config("tiny,runlocal,init=/some/export")
    assert c.model.init_from == "/some/export" and c.data.tokenizer is None
    assert "long_conv_l_max" not in c.model.overrides and c.model.overrides.max_position_embeddings == 8192
    plain = m2_retrieval.get_config("tiny")
    assert plain.model.init_from is None and plain.model.overrides.long_conv_l_max == 8192
    with pytest.raises(ValueError, match="init="):
        m2_retrieval.get_config("tiny,init=a,init=b")


def test_pretrain_then_retrieval_chain_through_the_engine(tmp_path, monkeypatch, data_dir):
    """``m2_pretrain.py`` exports (safetensors + config + Brown tokenizer); ``m2_retrieval.py:...,init=<export>``
    starts from it with the export's tokenizer and filters and the position table tiled to 8k."""
    from experiments.configs import m2_pretrain, m2_retrieval
    from jaxbert.train.loop import train_and_evaluate

    monkeypatch.setenv("JAXBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXBERT_DATA", str(data_dir))
    c = m2_pretrain.get_config("tiny,runlocal")
    c.mlm.max_documents = 12
    c.mlm.validation_ids = c.mlm.validation_ids[:2]
    c.mlm.tokenizer.out_dir = str(tmp_path / "tokenizer")
    c.progress = c.tensorboard = False
    c.num_train_steps = 2
    assert train_and_evaluate(c, tmp_path / "pre")["status"] == "done"
    export = tmp_path / "pre" / "export"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in export.iterdir()}
    pre = hf_convert.load_pretrained(export, task="base")  # pooler written for classification fine-tuning
    assert "pooler" in pre.params and pre.config.vocab_size == 2048

    r = m2_retrieval.get_config(f"tiny,runlocal,init={export}")
    r.evals.bbc_long.query_limit = 4
    r.progress = r.tensorboard = False
    r.data.max_length = 512
    r.data.buckets = (512,)
    r.num_train_steps = 2
    result = train_and_evaluate(r, tmp_path / "ret")
    assert result["status"] == "done"
    assert result["eval"]["bbc_long"]["num_queries"] == 4
    cfg = json.loads((tmp_path / "ret" / "config.json").read_text())
    assert cfg["model"]["init_from"] == str(export)
    # the retrieval export reads back into jaxbert (sentence-transformers layout around M2 weights)
    back = hf_convert.load_pretrained(tmp_path / "ret" / "export", task="base", add_pooling_layer=False)
    assert back.config.max_position_embeddings == 8192 and back.config.filter_l_max == pre.config.filter_l_max
