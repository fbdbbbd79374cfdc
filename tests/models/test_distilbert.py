"""DistilBERT (jaxbert/models/distilbert/: one folder + one registry line) against transformers.

A random-weight ``DistilBertForSequenceClassification`` (small config, fp32, every tensor perturbed
so biases and LayerNorms are not at their init values) is saved with ``save_pretrained``, once whole
and once as its bare ``DistilBertModel``, with MiniLM's WordPiece tokenizer. Checked: the backbone's
last hidden state and the classifier logits vs torch on a padded batch (<= 1e-5), export back to
transformers (no missing / unexpected keys, same logits), ``SentenceEncoder.from_pretrained``
(mean pooling vs torch's masked mean) and the classification launcher fine-tuning the bare model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxbert import SentenceEncoder  # noqa: E402
from jaxbert.convert.hf import load_pretrained, save_pretrained  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5
TEXTS = ["a gripping, beautifully acted film.", "dull.", "the plot meanders, but the last act lands with real force",
         "an unexpectedly tender comedy about two brothers and a broken-down car"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, minilm_dir):
    """``(whole, bare, torch_model, tokenizer)``: ForSequenceClassification dir, DistilBertModel dir."""
    tok = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    cfg = transformers.DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                        max_position_embeddings=128, num_labels=3)
    torch.manual_seed(0)
    model = transformers.DistilBertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("distilbert")
    whole, bare = root / "whole", root / "bare"
    model.save_pretrained(whole, safe_serialization=True)
    model.distilbert.save_pretrained(bare, safe_serialization=True)
    for d in (whole, bare):
        tok.save_pretrained(str(d))
    return whole, bare, model, tok


def _batch(tok):
    enc = tok(TEXTS, padding=True, return_tensors="np")
    assert (enc["attention_mask"] == 0).any()  # the batch has padding
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def test_backbone_and_classifier_parity(dirs):
    whole, bare, model, tok = dirs
    ids, mask = _batch(tok)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    output_hidden_states=True)
    ref_hidden, ref_logits = out.hidden_states[-1].numpy(), out.logits.numpy()
    for d in (whole, bare):
        pre = load_pretrained(d, task="base")
        assert not pre.report.missing and not pre.report.unexpected and pre.config.model_type == "distilbert"
        hidden = np.asarray(pre.model.apply({"params": pre.params}, ids, mask).last_hidden_state)
        diff = float(np.abs(hidden - ref_hidden).max())
        print(f"[parity] DistilBertModel last_hidden_state ({d.name} dir, padded batch): max |jax - torch| = {diff:.2e}")
        assert diff <= TOL
    pre = load_pretrained(whole, task="sequence_classification")
    assert pre.report.initialized == [] and pre.config.classifier_pre_activation == "relu"
    logits = np.asarray(pre.model.apply({"params": pre.params}, ids, mask)["logits"])
    diff = float(np.abs(logits - ref_logits).max())
    print(f"[parity] DistilBertForSequenceClassification logits: max |jax - torch| = {diff:.2e}")
    assert logits.shape == (len(TEXTS), 3) and diff <= TOL


def test_fresh_head_on_bare_backbone(dirs):
    _, bare, _, _ = dirs
    pre = load_pretrained(bare, task="sequence_classification", num_labels=2)
    assert sorted(pre.report.initialized) == ["classifier/out/bias", "classifier/out/kernel",
                                              "classifier/pre/bias", "classifier/pre/kernel"]


def test_export_loads_in_transformers(dirs, tmp_path):
    whole, _, model, tok = dirs
    ids, mask = _batch(tok)
    pre = load_pretrained(whole, task="sequence_classification")
    out = save_pretrained(tmp_path / "cls", pre.params, pre.config, task="sequence_classification")
    back, info = transformers.DistilBertForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        a = back.eval()(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
        b = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    assert float((a - b).abs().max()) <= TOL
    base = load_pretrained(whole, task="base")
    out = save_pretrained(tmp_path / "base", base.params, base.config)
    _, info = transformers.DistilBertModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert json.loads((out / "config.json").read_text())["architectures"] == ["DistilBertModel"]


def test_sentence_encoder_mean_pooling(dirs):
    _, bare, model, tok = dirs
    enc = SentenceEncoder.from_pretrained(bare)
    got = enc.encode(TEXTS)
    ids, mask = _batch(tok)
    with torch.no_grad():
        h = model.distilbert(input_ids=torch.tensor(ids, dtype=torch.long),
                             attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ref = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    diff = float(np.abs(got - ref).max())
    print(f"[parity] SentenceEncoder(DistilBERT) mean pooling vs torch: max abs diff = {diff:.2e}")
    assert got.shape == (len(TEXTS), 32) and diff <= TOL


def test_classification_launcher_trains(dirs, tmp_path, data_dir):
    _, bare, _, _ = dirs
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.launch", "--config",
           "experiments/configs/finetune_classification.py:rotten_tomatoes,runlocal", "--workdir", str(workdir),
           f"--config.model.init_from={bare}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXBERT_DATA": str(data_dir)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["status"] == "done" and summary["step"] == 8
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert losses and all(np.isfinite(losses))
    print(f"[launcher] DistilBERT rotten_tomatoes runlocal: train losses {losses}")
    # the launcher's export is a transformers DistilBertForSequenceClassification directory
    _, info = transformers.DistilBertForSequenceClassification.from_pretrained(summary["export_dir"],
                                                                              output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
