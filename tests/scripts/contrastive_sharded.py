"""Cross-device negatives on 8 simulated CPU devices; prints one JSON line.

Used by ``tests/train/test_contrastive_sharded.py`` in a subprocess (the device count flag must be
set before jax is imported). For a 32-row global batch of random query / doc (positive + 2
hard negatives) embeddings it compares, on meshes ``data=8`` and ``data=2 x fsdp=4``:

* ``gathered_mnrl_loss`` (shard_map + all_gather) with the single-device ``mnrl_loss`` on the
  same global batch: loss and gradients w.r.t. both inputs;
* ``mnrl_loss`` jitted over the sharded global arrays (what the Trainer does);
* GradCache over a sharded batch of a tiny model, against the single-device gradient.

With ``--trainer`` instead: per-step train losses of the contrastive task in the Trainer on a
1-device mesh and on ``data=8`` (global-jit and shard_map gathering).
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import flax.linen as nn  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from jaxbert.objectives import contrastive as C  # noqa: E402
from jaxbert.train.mesh import make_mesh  # noqa: E402

MESHES = {"data8": (("data", 8), ("fsdp", 1), ("tensor", 1)),
          "data2_fsdp4": (("data", 2), ("fsdp", 4), ("tensor", 1))}


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    q = rng.standard_normal((32, 16)).astype(np.float32)
    d = rng.standard_normal((32, 3, 16)).astype(np.float32)
    d[:, 0] += q
    kw = dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), partition_mode="joint")
    ref_loss, ref_grads = jax.value_and_grad(lambda a, b: C.mnrl_loss(a, b, **kw)[0], argnums=(0, 1))(q, d)
    ref_plain = float(C.mnrl_loss(q, d)[0])

    # tiny model for GradCache on a sharded batch
    from jaxbert.models import registry
    from jaxbert.models.pooling import pool
    cfg, backbone = registry.get("bert-tiny", hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=50, max_position_embeddings=16)
    model = backbone(cfg)
    ids = rng.integers(1, 50, (16, 2, 8)).astype(np.int32)
    params = nn.unbox(model.init(jax.random.key(0), ids[:, 0])["params"])

    def embed(p, x, r):
        n = x.shape[0]
        flat = x.reshape(n * 2, 8)
        return pool(model.apply({"params": p}, flat).last_hidden_state, jnp.ones_like(flat), "mean").reshape(n, 2, -1)

    gc_loss = lambda p, x: C.mnrl_loss(*(lambda e: (e[:, 0], e[:, 1:]))(C.grad_cache_embed(embed, p, x, jax.random.key(0), 4)))[0]  # noqa: E731
    ref_gc = jax.jit(jax.grad(lambda p, x: C.mnrl_loss(*(lambda e: (e[:, 0], e[:, 1:]))(embed(p, x, None)))[0]))(params, ids)

    out = {"single": {"loss": float(ref_loss), "plain_loss": ref_plain}}
    for name, spec in MESHES.items():
        mesh = make_mesh(spec)
        sh = NamedSharding(mesh, P(("data", "fsdp")))
        qs, ds = jax.device_put(q, sh), jax.device_put(d, sh)
        gathered = jax.jit(jax.value_and_grad(
            lambda a, b: C.gathered_mnrl_loss(a, b, mesh=mesh, **kw)[0], argnums=(0, 1)))
        g_loss, g_grads = gathered(qs, ds)
        plain_gathered = float(jax.jit(lambda a, b: C.gathered_mnrl_loss(a, b, mesh=mesh)[0])(qs, ds))
        with jax.set_mesh(mesh):  # default mesh from the context
            ctx_loss = float(jax.jit(lambda a, b: C.gathered_mnrl_loss(a, b)[0])(qs, ds))
        auto_loss = float(jax.jit(lambda a, b: C.mnrl_loss(a, b, **kw)[0])(qs, ds))
        xs = jax.device_put(ids, NamedSharding(mesh, P(("data", "fsdp"))))
        g_gc = jax.jit(jax.grad(gc_loss))(params, xs)
        out[name] = {
            "gathered_loss": float(g_loss), "gathered_plain_loss": plain_gathered, "context_mesh_loss": ctx_loss,
            "global_jit_loss": auto_loss,
            "grad_diff": max_diff(g_grads, ref_grads),
            "grad_sharding": str(g_grads[0].sharding.spec),
            "gradcache_grad_diff": max_diff(g_gc, ref_gc),
        }
    print(json.dumps(out))


def trainer_losses() -> dict:
    """Per-step train losses of the contrastive task in the Trainer (tiny BERT, MNRL, 2 steps of 16
    pairs) on a 1-device mesh and on data=8 with global-jit and shard_map gathering."""
    import tempfile
    from pathlib import Path

    from experiments.configs.sentence_embedding import get_config, pair_file
    from jaxbert.train.loop import Trainer

    tmp = Path(tempfile.mkdtemp())
    lines = open(pair_file("wordnet"), encoding="utf-8").read().splitlines()[:64]
    (tmp / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    runs = {"single": ((("data", 1), ("fsdp", 1), ("tensor", 1)), "global"),
            "data8_global": (MESHES["data8"], "global"),
            "data8_shard_map": (MESHES["data8"], "shard_map")}
    out = {}
    for name, (mesh, gather) in runs.items():
        c = get_config("wordnet,tiny,runlocal")
        c.data.train = str(tmp / "pairs.jsonl")
        c.eval_splits = ()
        c.checkpoint.best_metric = ""
        c.checkpoint.keep_best = 0
        c.model.overrides.hidden_dropout_prob = 0.0
        c.model.overrides.attention_probs_dropout_prob = 0.0
        c.batch_size, c.num_train_steps, c.log_every = 16, 2, 1
        c.optim.schedule, c.optim.warmup_ratio = "constant", 0.0
        c.export_hf = c.progress = c.tensorboard = False
        c.contrastive.gather = gather
        c.mesh = mesh
        device_count = 1
        for _, n in mesh:
            device_count *= n
        if device_count == 1:  # a 1-device mesh on an 8-device host: use the first device only
            import jax as _jax
            from jaxbert.train import mesh as mesh_lib
            orig = mesh_lib.make_mesh
            mesh_lib.make_mesh = lambda spec, devices=None: orig(spec, _jax.devices()[:1])
            try:
                Trainer(c, tmp / name).run()
            finally:
                mesh_lib.make_mesh = orig
        else:
            Trainer(c, tmp / name).run()
        rows = [json.loads(l) for l in (tmp / name / "metrics.jsonl").read_text().splitlines()]
        out[name] = [r["loss"] for r in rows if r["split"] == "train"]
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--trainer"]:
        print(json.dumps({"trainer": trainer_losses()}))
    else:
        main()
