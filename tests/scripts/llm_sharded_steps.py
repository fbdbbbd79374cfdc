"""A few LoRA contrastive steps of a tiny bidirectional Qwen2-shaped decoder on meshes of 8 simulated
CPU devices; prints JSON with per-mesh losses (run by tests/train/test_llm_sharding.py in a subprocess,
because the device count must be set before jax is imported).

Meshes: a 1-device reference, ``data=2 x fsdp=2 x tensor=2`` and ``fsdp=4 x tensor=2``. Params are
placed by their logical axis names (``jaxbert.train.mesh.DEFAULT_RULES``), LoRA leaves replicated,
the batch split over the data-parallel axes; the InfoNCE in-batch negatives span the global
batch (no explicit gather: jit computes the global score matrix).
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")]

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import flax.linen as nn  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from jaxbert.models import registry  # noqa: E402
from jaxbert.models.llm.model import LlmModel  # noqa: E402
from jaxbert.train.mesh import DEFAULT_RULES  # noqa: E402
from jaxbert.models.llm.pooling import llm_pool  # noqa: E402
from jaxbert.objectives.llm_embedding import contrastive_loss  # noqa: E402
from jaxbert.peft.base import flatten, unflatten  # noqa: E402
from jaxbert.peft.lora import LoRA  # noqa: E402
from jaxbert.train import mesh as mesh_lib  # noqa: E402

MESHES = {
    "single": (("data", 1), ("fsdp", 1), ("tensor", 1)),
    "data2_fsdp2_tensor2": (("data", 2), ("fsdp", 2), ("tensor", 2)),
    "fsdp4_tensor2": (("data", 1), ("fsdp", 4), ("tensor", 2)),
}
TARGETS = r"layer_\d+/(attention/(query|key|value|out)|mlp/(gate|up|down))/kernel$"


def batches(steps, b=8, l=10, vocab=256):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        ids = rng.integers(3, vocab, (3 * b, l)).astype(np.int32)  # queries, positives, hard negatives
        lens = rng.integers(4, l + 1, 3 * b)
        mask = (np.arange(l)[None] < lens[:, None]).astype(np.int32)
        out.append({"ids": np.where(mask > 0, ids, 0).astype(np.int32), "mask": mask})
    return out


def run(mesh_spec, steps=3):
    cfg = registry.get("qwen2-tiny", attention_mode="bidirectional")[0]
    model = LlmModel(cfg)
    n = int(np.prod([s for _, s in mesh_spec]))
    mesh = mesh_lib.make_mesh(mesh_spec, jax.devices()[:n])
    boxed = jax.eval_shape(lambda r: model.init(r, np.zeros((1, 4), np.int32)), jax.random.key(0))["params"]
    base = nn.unbox(model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"])
    lora = LoRA(cfg, targets=TARGETS, rank=4, alpha=8.0)
    params = lora.init(jax.random.key(1), base)
    # LoRA B starts at zero; start it small and random so the LoRA path matters in the first step.
    flat = flatten(params)
    for i, p in enumerate(sorted(k for k in flat if k.endswith("lora_b"))):
        flat[p] = 0.01 * jax.random.normal(jax.random.key(100 + i), flat[p].shape)
    params = unflatten(flat)
    base_sh, fallbacks = mesh_lib.param_shardings(boxed, mesh, DEFAULT_RULES)
    base_sh_flat = flatten(base_sh)
    rep = NamedSharding(mesh, P())
    shardings = unflatten({p: base_sh_flat.get(p, rep) for p in flatten(params)})
    labels = lora.labels(params)
    tx = optax.multi_transform({"peft": optax.adam(1e-2), "frozen": optax.set_to_zero()}, labels)

    def loss_fn(params, batch):
        ids, mask = batch["ids"], batch["mask"]
        out = model.apply({"params": lora.materialize(params)}, ids, mask)
        e = llm_pool(out.last_hidden_state, mask, "mean")
        b = e.shape[0] // 3
        return contrastive_loss(e[:b], e[b:2 * b], e[2 * b:, None], temperature=0.05, focal_gamma=1.0)[0]

    def step(params, opt_state, batch):
        loss, g = jax.value_and_grad(loss_fn)(params, batch)
        u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, loss

    batch_sh = {"ids": mesh_lib.batch_sharding(mesh, DEFAULT_RULES, 2), "mask": mesh_lib.batch_sharding(mesh, DEFAULT_RULES, 2)}
    losses = []
    with mesh, nn.logical_axis_rules(DEFAULT_RULES):
        params = jax.device_put(params, shardings)
        opt_state = tx.init(params)
        jstep = jax.jit(step)
        for bt in batches(steps):
            # Rows are [queries; positives; negatives], split over the data-parallel devices as one array;
            # the loss still sees the global batch.
            bt = {k: jax.device_put(v, batch_sh[k]) for k, v in bt.items()}
            params, opt_state, loss = jstep(params, opt_state, bt)
            losses.append(float(loss))
        spec = str(params["layer_0"]["attention"]["query"]["kernel"].sharding.spec)
    final = {p: np.asarray(jax.device_get(v)) for p, v in flatten(params).items() if p.endswith(("lora_a", "lora_b"))}
    return losses, spec, [f[0] for f in fallbacks], final


def main():
    results, ref_final = {}, None
    for name, spec in MESHES.items():
        losses, qspec, fallbacks, final = run(spec)
        if ref_final is None:
            ref_final = final
        diff = max(float(np.abs(final[p] - ref_final[p]).max()) for p in final)
        results[name] = {"losses": losses, "query_spec": qspec, "fallbacks": fallbacks, "lora_max_diff": diff}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
