"""PEFT through the training engine: frozen leaves stay bitwise unchanged, HFT's stage masks
(exactly half per category, new half at each boundary, reproducible by seed, no recompiles),
and one end-to-end Trainer run whose adapter checkpoint restores the same predictions.
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import peft
from jaxbert.models import build_task_model, registry
from jaxbert.objectives.classification import softmax_cross_entropy
from jaxbert.peft import flatten, unflatten
from jaxbert.peft.hft import categories, hft_mask
from jaxbert.train.optim import default_optim_config, make_optimizer
from jaxbert.train.state import TrainState
from jaxbert.train.step import make_train_step

from _configs import peft_config, write_small_trec

B, L = 4, 8
BATCH = {"input_ids": np.tile(np.array([[101, 7, 8, 9, 10, 102, 0, 0]], np.int32), (B, 1)) + np.arange(B)[:, None] * (
    np.array([0, 1, 1, 1, 1, 0, 0, 0]) > 0),
    "attention_mask": np.array([[1] * 6 + [0] * 2] * B, np.int32),
    "token_type_ids": np.zeros((B, L), np.int32),
    "labels": np.array([0, 1, 2, 1], np.int32), "weights": np.ones((B,), np.float32)}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def tiny():
    cfg, bb = registry.get("bert-tiny", vocab_size=128)  # dropout on: the mask-and-freeze path sees noise
    model = build_task_model(cfg, bb, "sequence_classification", 3)
    sample = {k: BATCH[k][:1] for k in INPUTS}
    params = nn.unbox(model.init(jax.random.key(0), **sample)["params"])  # eager: cheaper than compiling
    return cfg, model, params, sample


def _optim(lr=1e-2):
    c = default_optim_config()
    c.learning_rate, c.schedule, c.warmup_steps, c.weight_decay, c.total_steps = lr, "constant", 0, 0.01, 10
    return c


def _train(model, params, tx, steps):
    def loss_fn(p, batch, rng, deterministic=False):
        logits = model.apply({"params": p}, *(batch[k] for k in INPUTS), deterministic=deterministic,
                             rngs=None if deterministic else {"dropout": rng})["logits"]
        return softmax_cross_entropy(logits, batch["labels"], batch["weights"])

    step = jax.jit(make_train_step(loss_fn, tx))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(1)))
    states = [state]
    for _ in range(steps):
        state, _ = step(state, BATCH)
        states.append(state)
    return states, step


@pytest.mark.parametrize("name,opts", [
    ("lora", {"rank": 4, "dropout": 0.1}), ("pfeiffer", {"bottleneck": 8}), ("prefix", {"length": 2}),
    ("prompt", {"length": 2, "init_from": "random"}), ("bitfit", {}), ("lightweight", {"variant": "last_layer"}),
    ("dsee", {"rank": 2, "num_sparse": 8, "prune_sparsity": 0.25, "prune_at": 0.0}),
])
def test_frozen_leaves_bitwise_unchanged(tiny, name, opts):
    cfg, model, base, sample = tiny
    att = peft.attach(model, peft.build(peft_config(name, **opts), cfg), base, sample, seed=0)
    labels = att.model.method.labels(att.params)
    tx, info = make_optimizer(_optim(), att.params, labels=labels)
    states, _ = _train(att.model, att.params, tx, 3)
    before, after = flatten(states[0].params), flatten(states[-1].params)
    lab = flatten(labels)
    frozen = [p for p in lab if lab[p] == "frozen"]
    trained = [p for p in lab if lab[p] != "frozen"]
    assert frozen and trained
    for p in frozen:
        np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(before[p]), err_msg=p)
    assert all(not np.array_equal(np.asarray(after[p]), np.asarray(before[p])) for p in trained
               if not p.endswith("lora_a")), [p for p in trained if np.array_equal(after[p], before[p])]
    assert info["num_trainable"] == sum(int(np.prod(after[p].shape)) for p in trained)


def test_hft_half_per_category(tiny):
    _, _, params, _ = tiny
    groups, where = categories(flatten(params), peft.HFT.DEFAULTS["always_train"])
    assert sorted(groups) == ["embeddings", "layer_0/attention", "layer_0/mlp", "layer_0/norm",
                              "layer_1/attention", "layer_1/mlp", "layer_1/norm"]
    assert groups["layer_0/attention"] == ["key", "out", "query", "value"] or \
        sorted(groups["layer_0/attention"]) == ["key", "out", "query", "value"]
    masks = {}
    for stage in range(4):
        mask = flatten(hft_mask(params, stage, seed=0, always_train=peft.HFT.DEFAULTS["always_train"]))
        for g, members in groups.items():
            chosen = {where[p][1] for p in where if where[p][0] == g and float(mask[p]) == 1}
            assert len(chosen) * 2 == len(members), (stage, g, chosen)
            for p in where:  # a member's kernel and bias go together
                if where[p][0] == g:
                    assert float(mask[p]) == float(where[p][1] in chosen)
        for p in mask:
            if p.startswith(("classifier/", "encoder/pooler/")):
                assert float(mask[p]) == 1.0
        masks[stage] = {p: float(v) for p, v in mask.items()}
    assert len({tuple(sorted(m.items())) for m in masks.values()}) > 1  # the half changes between stages
    again = {p: float(v) for p, v in flatten(hft_mask(params, 2, 0, peft.HFT.DEFAULTS["always_train"])).items()}
    assert again == masks[2]  # reproducible
    other = {p: float(v) for p, v in flatten(hft_mask(params, 2, 7, peft.HFT.DEFAULTS["always_train"])).items()}
    assert other != masks[2]  # another seed, another selection


def test_hft_odd_member_count_alternates_across_layers():
    """LLaMA-style FFN (gate, up, down): half of the layers train two matrices, the others one."""
    params = {f"layer_{i}": {"mlp": {m: {"kernel": jnp.zeros((2, 2))} for m in ("gate", "up", "down")}}
              for i in range(6)}
    mask = flatten(hft_mask(params, 0, seed=3, always_train=None))
    per_layer = [sum(float(mask[f"layer_{i}/mlp/{m}/kernel"]) for m in ("gate", "up", "down")) for i in range(6)]
    assert sorted(per_layer) == [1, 1, 1, 2, 2, 2]


def test_hft_optimizer_masks_and_stages_without_recompile(tiny):
    cfg, model, params, _ = tiny
    method = peft.HFT(cfg, stage="steps", stage_steps=2)
    tx, _ = make_optimizer(_optim(), params)
    tx = method.wrap_optimizer(tx, total_steps=6, steps_per_epoch=100, seed=0)
    states, step = _train(model, params, tx, 4)
    m0 = flatten(method.mask(params, 0, seed=0))
    m1 = flatten(method.mask(params, 1, seed=0))
    p0, p2, p4 = (flatten(states[i].params) for i in (0, 2, 4))
    for p, m in m0.items():  # stage 0 (steps 1-2): frozen half bitwise unchanged, the other half moves
        same = np.array_equal(np.asarray(p2[p]), np.asarray(p0[p]))
        assert same == (float(m) == 0), p
    for p in m1:  # stage 1 (steps 3-4): only its own half moves
        if float(m1[p]) == 0:
            np.testing.assert_array_equal(np.asarray(p4[p]), np.asarray(p2[p]), err_msg=p)
    assert {p: float(v) for p, v in flatten(states[4].opt_state.mask).items()} == {p: float(v) for p, v in m1.items()}
    assert any(float(m0[p]) != float(m1[p]) for p in m0)
    # Adam moments of a leaf frozen in stage 0 stay zero (PyTorch requires_grad=False semantics).
    frozen0 = next(p for p, m in m0.items() if float(m) == 0)
    mu = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(states[2].opt_state.inner)
          if "/".join(str(getattr(k, "key", "")) for k in path).endswith(frozen0) and leaf.ndim > 0]
    assert mu and all(not np.any(np.asarray(x)) for x in mu)
    assert step._cache_size() == 1  # stage changes are data: one compiled step
    assert int(states[4].opt_state.count) == 4


@pytest.fixture(scope="module")
def small_trec(tmp_path_factory, data_dir):
    return write_small_trec(tmp_path_factory.mktemp("peftdata"), data_dir, 96, 24)


def test_trainer_lora_run_writes_adapter_that_restores_predictions(small_trec, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXBERT_DATA", str(small_trec))
    from experiments.configs.peft import get_config
    from jaxbert.peft.checkpoint import load_adapter
    from jaxbert.train.loop import Trainer

    c = get_config("lora,trec,tiny,runlocal")
    c.num_train_steps, c.progress, c.tensorboard = 4, False, False
    c.optim.learning_rate = 1e-2
    trainer = Trainer(c, tmp_path / "run")
    result = trainer.run()
    assert result["status"] == "done"
    assert Path(result["adapter_dir"], "adapter_config.json").is_file() and Path(result["export_dir"]).is_dir()
    assert trainer.optim_info["num_trainable"] < 0.01 * (trainer.optim_info["num_trainable"]
                                                        + trainer.optim_info["num_frozen"])
    params = trainer.final_state.params
    task = trainer.task
    base = unflatten({p: v for p, v in flatten(params).items() if not task.peft.method.is_peft_path(p)})
    pm, restored = load_adapter(result["adapter_dir"], task.peft.base_model, base, task.sample_input)
    batch = next(iter(task.eval_batches("test", 24)))
    want = task.predict_fn(params, batch)[0]["predictions"]
    got = jax.jit(lambda p, b: pm.apply({"params": p}, *(b[k] for k in INPUTS))["logits"].argmax(-1))(restored, batch)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # The frozen base kernels are bitwise the initial ones (random init of the tiny model, seed 0).
    init = flatten(trainer._new_state().params)
    for p in ("encoder/layer_0/attention/query/kernel", "encoder/embeddings/word_embeddings/embedding"):
        np.testing.assert_array_equal(np.asarray(flatten(params)[p]), np.asarray(init[p]))


def test_every_peft_config_variant_builds():
    from experiments.configs.peft import VARIANTS, get_config

    for variant, (method, _) in VARIANTS.items():
        c = get_config(f"{variant},trec")
        assert c.peft.method == method
        assert c.optim.learning_rate == (1e-4 if method == "none" else peft.METHODS[method].default_learning_rate)
    assert get_config("dsee_prune,rotten_tomatoes").peft.dsee.prune_sparsity == 0.5
    with pytest.raises(ValueError, match="unknown variant 'loraa'"):
        get_config("loraa,trec")
    with pytest.raises(peft.PeftError, match="unknown peft.method 'adapterz'"):
        pc = peft.default_config()
        pc.method = "adapterz"
        peft.build(pc, None)


def test_hft_embeddings_option(tiny):
    _, _, params, _ = tiny
    for mode, want in (("frozen", 0.0), ("train", 1.0)):
        mask = flatten(hft_mask(params, 0, 0, peft.HFT.DEFAULTS["always_train"], embeddings=mode))
        assert {float(v) for p, v in mask.items() if "/embeddings/" in p} == {want}
    with pytest.raises(peft.PeftError, match="peft.hft.embeddings='some'"):
        peft.HFT(tiny[0], embeddings="some")
