"""Run the same 3 training steps on several meshes of 8 simulated CPU devices; print JSON.

Used by ``tests/train/test_train_sharding.py`` in a subprocess, because the simulated device count
(``--xla_force_host_platform_device_count=8``) must be set before jax is imported::

    python tests/scripts/sharded_steps.py --train T.jsonl --test T.jsonl [--steps 3]

For each mesh (a 1-device reference first, then ``data=8``, ``data=2 x fsdp=4``,
``data=2 x tensor=4``) a :class:`jaxbert.train.loop.Trainer` is built from the tiny
``trec,tiny,runlocal`` config (dropout off, constant LR, global batch 16, 4 attention heads so
every model dimension divides 4) and trained for ``--steps`` steps on the *same* batches. The
JSON on the last stdout line holds, per mesh: the per-step losses, the largest and the relative
(L2) parameter difference from the reference after the last step, the fallbacks list, and for a few params (and
the Adam ``mu`` of one) the actual ``.sharding.spec``, shard shape and number of distinct shards.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import flax.linen as nn  # noqa: E402

from jaxbert.train import mesh as mesh_lib  # noqa: E402
from jaxbert.train.loop import Trainer  # noqa: E402
from tiny_config import make_config  # noqa: E402

MESHES = {
    "single": (("data", 1), ("fsdp", 1), ("tensor", 1)),
    "data8": (("data", 8), ("fsdp", 1), ("tensor", 1)),
    "data2_fsdp4": (("data", 2), ("fsdp", 4), ("tensor", 1)),
    "data2_tensor4": (("data", 2), ("fsdp", 1), ("tensor", 4)),
}

# Params (and one optimizer moment) whose placement the test checks.
WATCH = (
    "encoder/layer_0/attention/query/kernel",   # (embed, heads, kv)
    "encoder/layer_0/attention/query/bias",     # (heads, kv)
    "encoder/layer_0/attention/out/kernel",     # (heads, kv, embed)
    "encoder/layer_0/mlp/wi/kernel",            # (embed, mlp)
    "encoder/layer_0/mlp/wo/kernel",            # (mlp, embed)
    "encoder/embeddings/word_embeddings/embedding",  # (vocab, embed): vocab 30522 falls back
    "encoder/embeddings/norm/scale",            # (embed,)
    "classifier/out/kernel",                    # (embed_out, classes): replicated
)


def _make_mesh_for(spec):
    """``mesh_lib.make_mesh`` on as many of the 8 devices as ``spec`` needs (the 1-device reference)."""
    real = mesh_lib.make_mesh

    def make_mesh(s, devices=None):
        need = math.prod(int(n) for _, n in s)
        return real(s, devices=jax.devices()[:need] if devices is None and need > 0 else devices)
    return make_mesh, real


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def placement(arr) -> dict:
    sh = arr.sharding
    return {
        "spec": [list(a) if isinstance(a, tuple) else a for a in tuple(sh.spec)],
        "shape": list(arr.shape),
        "shard_shape": list(sh.shard_shape(arr.shape)),
        "addressable_shard_shapes": sorted({tuple(s.data.shape) for s in arr.addressable_shards}),
        "num_devices": len(arr.addressable_shards),
        "distinct_shards": len({str(s.index) for s in arr.addressable_shards}),
        "fully_replicated": bool(sh.is_fully_replicated),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--meshes", default=",".join(MESHES))
    args = ap.parse_args()
    assert len(jax.devices()) == 8, jax.devices()
    workdir = args.workdir or os.path.join(os.path.dirname(os.path.abspath(args.train)), "wd")

    out: dict = {"num_devices": len(jax.devices()), "meshes": {}}
    batches, ref_params = None, None
    for name in args.meshes.split(","):
        cfg = make_config(args.train, args.test, MESHES[name])
        patched, real = _make_mesh_for(MESHES[name])
        mesh_lib.make_mesh = patched
        try:
            trainer = Trainer(cfg, os.path.join(workdir, name))
        finally:
            mesh_lib.make_mesh = real
        if batches is None:  # the same global batches for every mesh
            it = trainer.task.train_iterator(cfg.batch_size, cfg.seed)
            batches = [next(it) for _ in range(args.steps)]
        rec: dict = {"mesh": dict(trainer.mesh.shape), "devices": int(trainer.mesh.devices.size),
                     "fallbacks": [[p, d, n] for p, d, n, _, _ in trainer.shardings.fallbacks]}
        with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
            state = trainer._new_state()
            init_sum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(state.params)))
            losses = []
            for batch in batches:
                state, m = trainer.train_step(state, mesh_lib.shard_batch(batch, trainer.mesh, trainer.rules))
                m = jax.device_get(m)
                losses.append(float(m["loss"]) / max(float(m["weight"]), 1.0))
        rec["losses"] = losses
        rec["init_abs_sum"] = init_sum
        params = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
        rec["params"] = {k: placement(params[k]) for k in WATCH}
        mu = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
              if "/mu/" in "/" + path_str(p) + "/"}
        rec["adam_mu"] = {}
        for k in WATCH:
            hits = [v for p, v in mu.items() if p.endswith("/mu/" + k)]
            assert len(hits) == 1, (k, [p for p in mu if p.endswith(k)])
            rec["adam_mu"][k] = placement(hits[0])
        host = {k: np.asarray(jax.device_get(v), np.float64) for k, v in params.items()}
        if ref_params is None:
            ref_params = host
        # Largest |p - p_ref| per leaf, and relative to the leaf's largest |p_ref|.
        diffs = {k: float(np.max(np.abs(host[k] - ref_params[k]))) for k in host}
        rec["param_max_abs_diff"] = max(diffs.values())
        rec["param_worst_leaves"] = {k: diffs[k] for k in sorted(diffs, key=diffs.get, reverse=True)[:3]}
        # ||p - p_ref|| / ||p_ref|| over all params together.
        rec["param_rel_l2_diff"] = math.sqrt(sum(float(np.sum((host[k] - ref_params[k]) ** 2)) for k in host)) / \
            math.sqrt(sum(float(np.sum(ref_params[k] ** 2)) for k in host))
        out["meshes"][name] = rec
        print(f"[sharded_steps] {name}: losses={losses} max|dp|={rec['param_max_abs_diff']:.3g}",
              file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
