"""The MLM task end to end: train, held-out eval, HF export (parity with transformers), fine-tune load,
DrBERT decoders, n-gram head, B-PROP pairs, generic backbones, resumable data, bad-input errors."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments.configs.pretrain_mlm import get_config
from jaxbert.data.masking import IGNORE
from jaxbert.models import registry
from jaxbert.tasks import get_task
from jaxbert.train.loop import train_and_evaluate


def small_config(tmp_path, masking="random", tokenizer=None, flags="", **mlm):
    c = get_config(f"tiny,{masking},runlocal{flags}")
    c.mlm.max_documents = 12
    c.mlm.validation_ids = c.mlm.validation_ids[:3]
    c.mlm.test_ids = c.mlm.test_ids[:2]
    c.mlm.tokenizer.out_dir = str(tmp_path / "tokenizer")
    c.data.tokenizer = tokenizer
    c.progress = False
    c.tensorboard = False
    for k, v in mlm.items():
        node = c.mlm
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def assert_export_matches_transformers(export, hf_class):
    """The export's MLM logits through jaxbert equal ``hf_class.from_pretrained(export)``'s (2e-4); returns the load."""
    import torch
    from transformers import AutoTokenizer
    from jaxbert.convert import hf as hf_convert

    tok = AutoTokenizer.from_pretrained(str(export))
    enc = tok(["the jury said friday an investigation of the election"], return_tensors="np")
    pre = hf_convert.load_pretrained(export, task="mlm")
    ours = pre.model.apply({"params": pre.params}, enc["input_ids"], enc["attention_mask"])["logits"]
    ref = hf_class.from_pretrained(str(export)).eval()
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).logits
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=2e-4)
    return pre


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    """One short from-scratch run: its workdir (metrics, export)."""
    tmp = tmp_path_factory.mktemp("mlm")
    c = small_config(tmp)
    c.num_train_steps = 8
    c.eval_every = 4
    result = train_and_evaluate(c, tmp / "run")
    return tmp / "run", result


def test_pretraining_run_trains_evaluates_and_exports(pretrained):
    workdir, result = pretrained
    assert result["status"] == "done"
    val = result["eval"]["validation"]
    assert np.isfinite(val["loss"]) and 0 <= val["accuracy"] <= 1 and val["num_predictions"] > 100
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "validation"] == [4, 8]  # held-out over training
    assert all(np.isfinite(r["loss"]) for r in rows)
    hf = json.loads((workdir / "export" / "config.json").read_text())
    assert hf["architectures"] == ["BertForMaskedLM"] and hf["vocab_size"] % 64 == 0


def test_export_matches_transformers_and_loads_for_finetuning(pretrained):
    pytest.importorskip("torch")
    from transformers import BertForMaskedLM
    from jaxbert.convert import hf as hf_convert

    export = pretrained[0] / "export"
    assert_export_matches_transformers(export, BertForMaskedLM)
    clf = hf_convert.load_pretrained(export, task="sequence_classification", num_labels=6)  # strict: no missing keys
    assert "classifier" in clf.params and "pooler" in clf.params["encoder"]


def test_prenorm_pretraining_exports_modernbert_that_transformers_and_finetuning_load(tmp_path, pretrained):
    """``prenorm``: the tiny shape on the ModernBERT block; its export is a ModernBertForMaskedLM that
    transformers reproduces, and fine-tuning loads its backbone with a fresh classifier."""
    pytest.importorskip("torch")
    from transformers import AutoModelForMaskedLM
    from jaxbert.convert import hf as hf_convert
    from jaxbert.models.transformer.model import Encoder

    c = small_config(tmp_path, tokenizer=str(pretrained[0] / "export"), flags=",prenorm")
    c.num_train_steps = 3
    assert c.optim.learning_rate == 3e-3 and c.model.overrides.intermediate_size == 320  # 8/3 x 128, x64
    task = get_task("mlm")(c)
    assert task.backbone is Encoder and task.model_config.norm_position == "pre"
    assert task.model_config.pad_token_id == task.tokenizer.pad_token_id == 0  # not the preset's 50283
    result = train_and_evaluate(c, tmp_path / "run")
    export = tmp_path / "run" / "export"
    hf = json.loads((export / "config.json").read_text())
    assert hf["architectures"] == ["ModernBertForMaskedLM"] and hf["hidden_size"] == 128
    assert hf["layer_types"] == ["full_attention", "full_attention"] and result["status"] == "done"
    pre = assert_export_matches_transformers(export, AutoModelForMaskedLM)
    clf = hf_convert.load_pretrained(export, task="sequence_classification", num_labels=6)  # strict
    assert set(clf.params) == {"encoder", "classifier"} and clf.report.initialized
    np.testing.assert_array_equal(clf.params["encoder"]["layer_1"]["mlp"]["wo"]["kernel"],
                                  pre.params["encoder"]["layer_1"]["mlp"]["wo"]["kernel"])


def test_drbert_decoder_and_ngram_head_are_pretraining_only(tmp_path, pretrained, data_dir):
    tok = str(pretrained[0] / "export")
    c = small_config(tmp_path, "ngram", tokenizer=tok, **{"decoder.kind": "gua", "decoder.num_layers": 2,
                                                          "decoder.output_mix_prob": 0.2, "ngram.min_count": 2})
    task = get_task("mlm")(c)
    assert len(task.lexicon) > 10
    params = nn.unbox(jax.jit(lambda r: task.model.init(r, **task.sample_input))(jax.random.key(0))["params"])
    assert {"encoder", "mlm_head", "mlm_decoder", "ngram_head", "ngram_offsets"} <= set(params)
    batch = next(task.train_iterator(4, seed=0))
    assert (batch["ngram_labels"] != IGNORE).any()
    loss, sums = jax.jit(task.loss_fn, static_argnums=3)(params, batch, jax.random.key(1), False)
    assert np.isfinite(float(loss)) and float(sums["ngram_loss"]) > 0
    out = task.export(params, tmp_path / "export")
    from jaxbert.convert import hf as hf_convert
    clf = hf_convert.load_pretrained(out, task="sequence_classification", num_labels=3)
    assert set(clf.params) == {"encoder", "classifier"}  # fine-tuning tree unchanged
    note = json.loads((out / "config.json").read_text())["jaxbert_pretraining"]
    assert note["dropped_pretraining_heads"] == ["mlm_decoder", "ngram_head", "ngram_offsets"]


def test_bprop_pairs_and_rop_loss(tmp_path, pretrained):
    from jaxbert.tasks import bprop

    export = str(pretrained[0] / "export")
    c = small_config(tmp_path, tokenizer=export, **{"bprop.enabled": True, "bprop.max_documents": 20,
                                                    "bprop.max_length": 64})
    c.model.init_from = export
    task = get_task("mlm")(c)
    pairs = task.rop_pairs
    assert pairs["rop_pos_input_ids"].shape == pairs["rop_neg_input_ids"].shape
    assert pairs["rop_pos_input_ids"].shape[1] == 64
    assert (pairs["rop_pos_input_ids"] != pairs["rop_neg_input_ids"]).any(axis=1).all()
    it = task.train_iterator(4, seed=0)
    batch = next(it)
    params = task.pretrained_params
    loss, sums = jax.jit(task.loss_fn, static_argnums=3)(params, batch, jax.random.key(0), False)
    assert np.isfinite(float(loss)) and float(sums["rop_loss"]) >= 0
    state = it.get_state()
    nxt = next(it)
    it2 = task.train_iterator(4, seed=0)
    it2.set_state(state)
    again = next(it2)
    assert all(np.array_equal(nxt[k], again[k]) for k in nxt)
    # the contrastive distribution favours words over-represented in the document
    q = bprop.contrastive_distribution({("a",): 0.5, ("b",): 0.3, ("c",): 0.2},
                                       {("a",): 0.5, ("b",): 0.01, ("c",): 0.49})
    assert set(q) == {("b",)}


def test_generic_backbone_without_segment_ids(tmp_path, pretrained, monkeypatch):
    from jaxbert.models.bert.model import BertModel

    class PlainBackbone(BertModel):  # BertModel's signature minus segment_ids
        def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                     deterministic: bool = True):
            return super().__call__(input_ids, attention_mask, token_type_ids, position_ids, deterministic)

    cfg, _ = registry.get("bert-tiny")
    monkeypatch.setitem(registry._PRESETS, "plain-tiny", (lambda: cfg, PlainBackbone))
    c = small_config(tmp_path, tokenizer=str(pretrained[0] / "export"))
    c.model.preset = "plain-tiny"
    with pytest.raises(ValueError, match="segment_ids"):
        get_task("mlm")(c)
    c.mlm.packing = False
    task = get_task("mlm")(c)
    params = nn.unbox(jax.jit(lambda r: task.model.init(r, **task.sample_input))(jax.random.key(0))["params"])
    loss, _ = task.loss_fn(params, next(task.train_iterator(2, seed=0)), jax.random.key(0), True)
    assert np.isfinite(float(loss))


def test_bad_inputs_are_clear_errors(tmp_path, pretrained):
    tok = str(pretrained[0] / "export")
    c = small_config(tmp_path, tokenizer=tok)
    c.data.max_length = 2
    with pytest.raises(ValueError, match=r"\[CLS\] and \[SEP\]"):
        get_task("mlm")(c)
    c = small_config(tmp_path, tokenizer=tok)
    c.mlm.rate = 1.2
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        get_task("mlm")(c)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "  "}\n{"text": ""}\n')
    c = small_config(tmp_path)
    c.data.train = str(empty)
    c.mlm.id_field = None
    c.mlm.validation_ids = ()
    c.mlm.test_ids = ()
    with pytest.raises(ValueError, match="no training text"):
        get_task("mlm")(c)
    c = small_config(tmp_path)
    c.mlm.tokenizer.vocab_size = 3
    with pytest.raises(ValueError, match="special tokens"):
        get_task("mlm")(c)
    with pytest.raises(ValueError, match="unknown masking"):
        get_config("mini,bert")
