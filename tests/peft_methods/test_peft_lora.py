"""LoRA and DSEE: merge/unmerge equivalence, transformers parity of a merged export, exact sparsity,
and the bad-input errors (targets that match nothing, bad ranks).

A random 2-layer BERT (small vocabulary) keeps every test to a few seconds.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import peft
from jaxbert.models import build_task_model, registry
from jaxbert.peft import PeftError, flatten, unflatten
from jaxbert.peft.dsee import DSEE, godec_support, magnitude_mask
from jaxbert.peft.lora import LoRA, merge, unmerge

from _configs import peft_config

SAMPLE = {"input_ids": np.array([[101, 7, 8, 9, 10, 102, 0, 0], [101, 11, 12, 102, 0, 0, 0, 0]], np.int32),
          "attention_mask": np.array([[1] * 6 + [0] * 2, [1] * 4 + [0] * 4], np.int32)}


@pytest.fixture(scope="module")
def tiny():
    cfg, bb = registry.get("bert-tiny", vocab_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build_task_model(cfg, bb, "sequence_classification", 3)
    params = nn.unbox(model.init(jax.random.key(0), **SAMPLE)["params"])  # eager: cheaper than compiling
    return cfg, model, params


def _attach(tiny, method_name, **opts):
    cfg, model, params = tiny
    att = peft.attach(model, peft.build(peft_config(method_name, **opts), cfg), params, SAMPLE, seed=0)
    return att.model, att.params


def _perturb(params, names=("lora_b", "dsee_values"), seed=1):
    """Nonzero values for the zero-initialised factors (as if trained)."""
    flat = flatten(params)
    for i, p in enumerate(sorted(flat)):
        if p.rsplit("/", 1)[-1] in names:
            flat[p] = 0.5 * jax.random.normal(jax.random.key(seed + i), flat[p].shape)
    return unflatten(flat)


def test_lora_init_matches_peft_conventions(tiny):
    pm, params = _attach(tiny, "lora", rank=4, alpha=8.0)
    flat = flatten(params)
    a = flat["encoder/layer_0/attention/query/lora_a"]
    b = flat["encoder/layer_0/attention/query/lora_b"]
    assert a.shape == (128, 4) and b.shape == (4, 128)  # q kernel [128, 2, 64] seen as [128, 128]
    assert float(jnp.abs(a).max()) <= 1 / np.sqrt(128) and float(jnp.abs(a).std()) > 0  # kaiming-uniform(a=sqrt 5)
    assert not np.any(np.asarray(b))  # B zeros: starts at the base model
    assert set(p.rsplit("/", 2)[-2] for p in flat if p.endswith("lora_a")) == {"query", "value"}  # default targets
    assert pm.method.scale == 2.0
    assert LoRA(tiny[0], rank=4, alpha=8.0, rslora=True).scale == 4.0


def test_merge_unmerge_equivalence(tiny):
    cfg, model, base = tiny
    pm, params = _attach(tiny, "lora", rank=4, targets=r"attention/(query|key|value|out)/kernel$|mlp/wi/kernel$")
    params = _perturb(params)
    unmerged = pm.apply({"params": params}, **SAMPLE)["logits"]
    merged_params = merge(params, pm.method)
    assert not any("lora" in p for p in flatten(merged_params))
    merged = model.apply({"params": merged_params}, **SAMPLE)["logits"]
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)
    assert float(jnp.abs(merged - model.apply({"params": base}, **SAMPLE)["logits"]).max()) > 1e-3
    # The attention output kernel [heads, head_dim, embed] is a [heads*head_dim, embed] matrix.
    assert flatten(params)["encoder/layer_0/attention/out/lora_a"].shape == (128, 4)
    back = flatten(unmerge(merged_params, params, pm.method))
    for p, w in flatten(base).items():
        np.testing.assert_allclose(back[p], w, atol=1e-6, err_msg=p)


def test_merged_export_matches_transformers(tiny, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import BertForSequenceClassification
    from jaxbert.convert import hf as hf_convert

    cfg, model, _ = tiny
    pm, params = _attach(tiny, "lora", rank=4)
    params = _perturb(params)
    out = hf_convert.save_pretrained(tmp_path / "export", pm.merge(params), cfg, task="sequence_classification")
    hf = BertForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(SAMPLE["input_ids"], dtype=torch.long),
                 attention_mask=torch.tensor(SAMPLE["attention_mask"], dtype=torch.long)).logits.numpy()
    ours = np.asarray(pm.apply({"params": params}, **SAMPLE)["logits"])
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_lora_dropout_changes_train_output_only(tiny):
    pm, params = _attach(tiny, "lora", rank=4, dropout=0.5)
    params = _perturb(params)
    det = pm.apply({"params": params}, **SAMPLE, deterministic=True)["logits"]
    det2 = pm.apply({"params": params}, **SAMPLE, deterministic=True)["logits"]
    tr = pm.apply({"params": params}, **SAMPLE, deterministic=False, rngs={"dropout": jax.random.key(3)})["logits"]
    np.testing.assert_array_equal(det, det2)
    assert float(jnp.abs(tr - det).max()) > 0


def test_target_regex_matching_nothing_lists_paths(tiny):
    with pytest.raises(PeftError, match=r"matches no parameter; parameter paths include: .*encoder/"):
        _attach(tiny, "lora", targets=r"attention/qkv_fused/kernel$")
    with pytest.raises(PeftError, match=r"must select weight matrices"):
        _attach(tiny, "lora", targets=r"attention/query/bias$")


@pytest.mark.parametrize("rank", [0, -2])
def test_rank_must_be_positive(tiny, rank):
    with pytest.raises(PeftError, match=r"rank must be a positive int"):
        _attach(tiny, "lora", rank=rank)


def test_rank_larger_than_matrix_names_it(tiny):
    with pytest.raises(PeftError, match=r"rank=200 is larger than the matrix encoder/layer_\d/attention/query/kernel "
                                         r"\(shape \(128, 2, 64\), as \[in, out\] = \[128, 128\]\); use rank <= 128"):
        _attach(tiny, "lora", rank=200)


@pytest.mark.parametrize("support", ["magnitude", "random", "decomposition"])
def test_dsee_exactly_n_nonzeros(tiny, support):
    pm, params = _attach(tiny, "dsee", rank=2, num_sparse=16, support=support)
    flat = flatten(params)
    kernels = [p for p in flat if p.endswith("/dsee_index")]
    assert len(kernels) == 4  # q, v of 2 layers
    trained = flatten(_perturb(params, names=("dsee_values",)))
    for p in kernels:
        m = p.rsplit("/", 1)[0]
        idx = np.asarray(flat[p]).astype(int)
        assert len({tuple(r) for r in idx}) == 16  # distinct positions
        w = flat[f"{m}/kernel"].reshape(128, 128)
        ds = np.zeros((128, 128))
        np.add.at(ds, (idx[:, 0], idx[:, 1]), np.asarray(trained[f"{m}/dsee_values"]))
        assert np.count_nonzero(ds) == 16
        if support == "magnitude":
            assert np.abs(w).reshape(-1)[idx[:, 0] * 128 + idx[:, 1]].min() >= np.sort(np.abs(w).reshape(-1))[-16]
    # The merged update minus the LoRA part is exactly the sparse matrix.
    merged = flatten(pm.merge(_perturb(params, names=("dsee_values",))))
    lora_only = flatten(LoRA.materialize(pm.method, _perturb(params, names=("dsee_values",))))
    m = kernels[0].rsplit("/", 1)[0]
    assert np.count_nonzero(np.abs(np.asarray(merged[f"{m}/kernel"] - lora_only[f"{m}/kernel"])) > 1e-7) == 16


def test_godec_support_finds_planted_sparse_entries():
    """Low rank + 12 planted entries: the decomposition finds all 12, plain magnitude does not."""
    rng = np.random.default_rng(1)
    low = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 30))
    spikes = rng.choice(40 * 30, 12, replace=False)
    w = low.reshape(-1).copy()
    w[spikes] += 8.0 * np.sign(rng.normal(size=12))
    idx = np.asarray(godec_support(jnp.asarray(w.reshape(40, 30)), rank=3, n=12, iters=3))
    assert set(idx.tolist()) == set(spikes.tolist())
    assert len(set(np.argsort(-np.abs(w))[:12].tolist()) & set(spikes.tolist())) < 12


def test_dsee_pruning_mask_sparsity(tiny):
    pm, params = _attach(tiny, "dsee", rank=2, num_sparse=8, prune_sparsity=0.3, prune_at=0.5)
    flat = flatten(params)
    masks = [p for p in flat if p.endswith("/prune_mask")]
    assert len(masks) == 2 * 6  # q/k/v/out/wi/wo of 2 layers
    assert all(np.all(np.asarray(flat[p]) == 1) for p in masks)  # not pruned before prune_at
    assert set(pm.method.step_hooks(10)) == {5}
    pruned = flatten(pm.method.prune(_perturb(params)))
    merged = flatten(pm.merge(unflatten(pruned)))
    for p in masks:
        mask = np.asarray(pruned[p])
        assert int((mask == 0).sum()) == round(0.3 * mask.size), p
        w = np.asarray(merged[p.rsplit("/", 1)[0] + "/kernel"])
        assert int((w == 0).sum()) == round(0.3 * w.size)
    assert int((np.asarray(magnitude_mask(jnp.arange(10.0) - 4.5, 0.4)) == 0).sum()) == 4


def test_dsee_bad_options(tiny):
    with pytest.raises(PeftError, match="num_sparse=99999 exceeds the 16384 entries"):
        _attach(tiny, "dsee", num_sparse=99999)
    with pytest.raises(PeftError, match="support='topk'"):
        DSEE(tiny[0], support="topk")
    with pytest.raises(PeftError, match="unknown option"):
        DSEE(tiny[0], sparse_n=3)
