"""Mixture-of-experts embedder: enforced routing sends each example only to its domain's expert
(outputs and gradients), experts initialised from a dense FFN reproduce the dense model, the
learned router routes at inference, and the task trains / exports per-domain models."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from jaxbert.models import moe_embedder as M
from jaxbert.models import registry


@pytest.fixture(scope="module")
def parts():
    cfg, backbone = registry.get("bert-tiny", hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=60, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    dense = backbone(cfg)
    ids = np.random.default_rng(0).integers(1, 60, (4, 10)).astype(np.int32)
    dense_params = nn.unbox(dense.init(jax.random.key(0), ids)["params"])
    cls, moe_cfg, moe_params = M.moe_backbone(cfg, dense_params, num_experts=3, layers=(1,))
    # make the experts different
    for e in range(3):
        moe_params["layer_1"][f"mlp_expert_{e}"] = jax.tree.map(
            lambda a: a + 0.05 * (e + 1) * jax.random.normal(jax.random.key(e), a.shape), dense_params["layer_1"]["mlp"])
    return dense, dense_params, cls(moe_cfg), moe_cfg, moe_params, ids


def test_init_from_dense_reproduces_dense(parts):
    dense, dense_params, moe, moe_cfg, _, ids = parts
    moe_params = M.experts_from_dense(dense_params, moe_cfg)
    ref = dense.apply({"params": dense_params}, ids).last_hidden_state
    for d in range(3):
        out = moe.apply({"params": moe_params}, ids, domains=jnp.full((4,), d)).last_hidden_state
        assert float(jnp.abs(out - ref).max()) < 1e-6


def test_enforced_routing_outputs_and_gradients(parts):
    dense, _, moe, moe_cfg, moe_params, ids = parts
    domains = jnp.array([0, 2, 1, 0])
    out = moe.apply({"params": moe_params}, ids, domains=domains).last_hidden_state
    for i, d in enumerate(domains.tolist()):
        p, _ = M.expert_as_dense(moe_params, moe_cfg, d)
        ref = dense.apply({"params": p}, ids[i:i + 1]).last_hidden_state
        assert float(jnp.abs(out[i] - ref[0]).max()) < 1e-5
    # examples of domains 0 and 2 only: expert 1 gets exactly zero gradient, the others do not
    only_02 = jnp.array([0, 2, 0, 2])
    grads = jax.grad(lambda p: jnp.sum(moe.apply({"params": p}, ids, domains=only_02).last_hidden_state ** 2))(moe_params)
    g = grads["layer_1"]
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g["mlp_expert_1"]))
    assert all(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves(g["mlp_expert_0"]))
    assert all(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves(g["mlp_expert_2"]))


def test_learned_router_at_inference(parts):
    dense, _, moe, moe_cfg, moe_params, ids = parts
    params = dict(moe_params)
    params["router"] = {"kernel": jnp.zeros_like(moe_params["router"]["kernel"]), "bias": jnp.array([0.0, 5.0, 0.0])}
    out = moe.apply({"params": params}, ids, domains=jnp.full((4,), -1)).last_hidden_state
    p1, _ = M.expert_as_dense(params, moe_cfg, 1)
    ref = dense.apply({"params": p1}, ids).last_hidden_state
    assert float(jnp.abs(out - ref).max()) < 1e-5


def test_bad_expert_config():
    cfg, _ = registry.get("bert-tiny")
    with pytest.raises(ValueError, match=r"moe_layers \[5\] out of range for 2 layers"):
        M.moe_backbone(cfg, None, num_experts=2, layers=(5,))
    with pytest.raises(ValueError, match="num_experts must be >= 1"):
        M.moe_backbone(cfg, None, num_experts=0)


def test_task_with_domains(tmp_path, minilm_dir):
    from experiments.configs.sentence_embedding import get_config
    from jaxbert.tasks import get_task

    rows = [{"anchor": f"question {i} about {t}", "positive": f"answer {i} on {t}", "domain": t}
            for i, t in enumerate(["ai", "food", "ai", "food"] * 4)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = get_config("wordnet,tiny,runlocal")
    c.data.train = str(tmp_path / "p.jsonl")
    c.data.domain_field = "domain"
    c.contrastive.domains = ("ai", "food")
    c.contrastive.moe.layers = (1,)
    c.eval_splits = ()
    task = get_task("contrastive")(c)
    params = nn.unbox(jax.jit(task.model.init)(jax.random.key(0), **task.sample_input)["params"])
    assert "mlp_expert_1" in params["encoder"]["layer_1"] and "mlp" in params["encoder"]["layer_0"]
    batch = next(task.train_iterator(8, 0))
    assert batch["domains"].tolist() and set(batch["domains"].tolist()) <= {0, 1}
    loss, sums = jax.jit(lambda p: task.loss_fn(p, batch, jax.random.key(0), False))(params)
    assert np.isfinite(float(loss))
    out = task.export(params, tmp_path / "export")
    assert (out / "ai" / "modules.json").is_file() and (out / "food" / "modules.json").is_file()
    # a domain outside the expert table stops with the file and line
    rows[5]["domain"] = "sports"
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"p.jsonl line 6 \(record 5\): domain 'sports' is not in the expert table"):
        get_task("contrastive")(c)
