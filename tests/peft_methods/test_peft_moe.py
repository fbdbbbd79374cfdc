"""PEFT on the mixture-of-experts embedder: its blocks have the extension sites, so LoRA and the
module methods (Houlsby adapters here, prefix tuning) attach to the MoE model, a zero-length prefix
leaves its outputs unchanged, and a few contrastive + routing-loss steps move only the trainable
leaves: the PEFT leaves and the router (a fresh head, trained by its routing loss); the experts and
every other base weight stay bitwise unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import peft
from jaxbert.models import moe_embedder, registry
from jaxbert.models.embedder import SentenceEmbedder
from jaxbert.objectives.contrastive import mnrl_loss
from jaxbert.peft import flatten
from jaxbert.train.optim import default_optim_config, make_optimizer
from jaxbert.train.state import TrainState
from jaxbert.train.step import make_train_step

from _configs import peft_config

B, L = 4, 8
_rng = np.random.default_rng(0)
QUERIES = {"input_ids": _rng.integers(1, 64, (B, L)).astype(np.int32),
           "attention_mask": np.array([[1] * 6 + [0] * 2] * B, np.int32),
           "token_type_ids": np.zeros((B, L), np.int32)}
DOCS = {"input_ids": _rng.integers(1, 64, (B, L)).astype(np.int32),
        "attention_mask": np.array([[1] * 7 + [0]] * B, np.int32),
        "token_type_ids": np.zeros((B, L), np.int32)}
DOMAINS = np.array([0, 1, 1, 0], np.int32)


@pytest.fixture(scope="module")
def moe():
    cfg, _ = registry.get("bert-tiny", vocab_size=64, max_position_embeddings=16, add_pooling_layer=False)
    backbone, moe_cfg, _ = moe_embedder.moe_backbone(cfg, None, num_experts=2, layers=(1,))
    model = SentenceEmbedder(moe_cfg, backbone)
    sample = {**{k: v[:1] for k, v in QUERIES.items()}, "domains": DOMAINS[:1]}
    params = nn.unbox(model.init(jax.random.key(0), **sample)["params"])  # eager: cheaper than compiling
    return moe_cfg, model, params, sample


def _attach(moe, name, **opts):
    cfg, model, params, sample = moe
    return peft.attach(model, peft.build(peft_config(name, **opts), cfg), params, sample, seed=0)


def test_zero_length_prefix_reproduces_the_moe_model(moe):
    _, model, params, _ = moe
    att = _attach(moe, "prefix", length=0)
    assert any("/prefix/" in p for p in flatten(att.params))
    for d in (0, 1):
        kw = {**QUERIES, "domains": np.full((B,), d, np.int32)}
        np.testing.assert_array_equal(np.asarray(att.model.apply({"params": att.params}, **kw)),
                                      np.asarray(model.apply({"params": params}, **kw)))


@pytest.mark.parametrize("name,opts,added", [
    ("lora", {"rank": 4}, {"lora_a", "lora_b"}),
    ("houlsby", {"bottleneck": 8}, {"adapter_attention", "adapter_mlp"}),
])
def test_training_moves_only_the_peft_leaves(moe, name, opts, added):
    att = _attach(moe, name, **opts)
    flat = flatten(att.params)
    segments = {s for p in flat if att.model.method.is_peft_path(p) for s in p.split("/")}
    assert added <= segments
    # the sites sit in the expert layer too (layer_1 has mlp_expert_{0,1} and no plain mlp)
    assert any(p.startswith("encoder/layer_1/") and att.model.method.is_peft_path(p) for p in flat)
    assert "encoder/layer_1/mlp_expert_1/wi/kernel" in flat

    def loss_fn(p, batch, rng, deterministic=False):
        kw = dict(deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
        q = att.model.apply({"params": p}, *(batch["q_" + k] for k in QUERIES), domains=batch["domains"], **kw)
        d = att.model.apply({"params": p}, *(batch["d_" + k] for k in DOCS), domains=batch["domains"], **kw)
        loss, sums = mnrl_loss(q, d)
        route = moe_embedder.router_loss(att.model, p, {k: batch["q_" + k][:, None] for k in QUERIES},
                                         batch["domains"])
        return loss + route, {**sums, "loss": sums["loss"] + route * sums["weight"]}

    oc = default_optim_config()
    oc.learning_rate, oc.schedule, oc.warmup_steps, oc.weight_decay, oc.total_steps = 1e-2, "constant", 0, 0.01, 10
    labels = att.model.method.labels(att.params)
    tx, info = make_optimizer(oc, att.params, labels=labels)
    step = jax.jit(make_train_step(loss_fn, tx))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=att.params, opt_state=tx.init(att.params),
                       rng=jax.random.key_data(jax.random.key(1)))
    batch = {**{"q_" + k: v for k, v in QUERIES.items()}, **{"d_" + k: v for k, v in DOCS.items()},
             "domains": DOMAINS}
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]) / float(metrics["weight"]))
    before, after, lab = flatten(att.params), flatten(state.params), flatten(labels)
    frozen = [p for p in lab if lab[p] == "frozen"]
    trained = [p for p in lab if lab[p] != "frozen"]
    router = {"encoder/router/kernel", "encoder/router/bias"}
    assert set(trained) == {p for p in lab if att.model.method.is_peft_path(p)} | router
    assert any("mlp_expert" in p for p in frozen)
    for p in frozen:
        np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(before[p]), err_msg=p)
    moved = [p for p in trained if not np.array_equal(np.asarray(after[p]), np.asarray(before[p]))]
    # LoRA's A moves only once B is non-zero (B starts at zero), so every B, the adapters and the router move
    assert moved and all(p in moved for p in trained if not p.endswith("lora_a")), sorted(set(trained) - set(moved))
    assert info["num_trainable"] == sum(int(np.prod(after[p].shape)) for p in trained)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
