"""Compiler options of jaxbert's jitted functions: on CPU the dots run on Eigen, not YNNPACK.

The options are checked where they act, in the compiled HLO (no ``dot`` inside a
``__ynn_fusion`` by default, some with ``JAXBERT_CPU_DOTS=xla``), and the results are checked
to be XLA's default ones to float32 rounding: a train step of a small BERT classifier (loss,
gradient norm, every parameter after two SGD steps) and an encoder forward.
"""

from __future__ import annotations

import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbert import compiler_options as co
from jaxbert.models import build_task_model, registry
from jaxbert.train import mesh as mesh_lib
from jaxbert.train.state import TrainState
from jaxbert.train.step import jit_train_step, make_train_step


def _dots_by_library(hlo: str) -> dict[str, int]:
    """Count the dots of a compiled module: in YNNPACK fusions that are a GEMM (no reduction
    fused), in YNNPACK reduction fusions (a product feeding a reduction, e.g. attention scores
    and their row maximum), and everywhere else (Eigen)."""
    bodies, current = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if m:
            current = m.group(1)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
    ynn_called = set()
    for line in hlo.splitlines():
        if '"__ynn_fusion"' in line:
            ynn_called.update(re.findall(r"calls=%([\w.\-]+)", line))
    counts = {"ynn_gemm": 0, "ynn_reduce": 0, "other": 0}
    for name, lines in bodies.items():
        n = sum(1 for line in lines if re.search(r"= \S+ dot\(", line))
        if name not in ynn_called:
            counts["other"] += n
        elif any(re.search(r"= \S+ reduce\(", line) for line in lines):
            counts["ynn_reduce"] += n
        else:
            counts["ynn_gemm"] += n
    return counts


def test_choice_and_devices(monkeypatch):
    cpu = jax.devices("cpu")
    monkeypatch.delenv(co.CPU_DOTS_ENV, raising=False)
    assert co.cpu_dots_choice() == "eigen"
    assert co.compiler_options(cpu) == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    mesh = mesh_lib.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=cpu[:1])
    assert co.compiler_options(mesh) == co.compiler_options(cpu)
    # a GPU/TPU device anywhere: XLA's defaults, the CPU options would mean nothing there
    gpu = types.SimpleNamespace(platform="gpu")
    assert co.compiler_options([gpu]) is None
    assert co.compiler_options([cpu[0], gpu]) is None
    # the returned dict is a copy: a caller adding options does not change the next caller's
    co.compiler_options(cpu)["xla_cpu_enable_fast_math"] = True
    assert "xla_cpu_enable_fast_math" not in co.compiler_options(cpu)
    monkeypatch.setenv(co.CPU_DOTS_ENV, " XLA ")
    assert co.compiler_options(cpu) is None
    monkeypatch.setenv(co.CPU_DOTS_ENV, "mkl")
    with pytest.raises(ValueError, match=r"JAXBERT_CPU_DOTS='mkl'; known: eigen, xla"):
        co.compiler_options(cpu)


def _tiny_batch() -> dict:
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(1, 211, size=(8, 32)).astype(np.int32),
             "attention_mask": (np.arange(32)[None] < rng.integers(8, 33, size=(8, 1))).astype(np.int32),
             "labels": rng.integers(0, 3, size=(8,)).astype(np.int32)}
    return batch


def _tiny_bert():
    return registry.get("bert-tiny", num_hidden_layers=2, vocab_size=211, max_position_embeddings=64)


def _train_two_steps(model, batch, mesh):
    def loss_fn(params, b, rng, deterministic):
        out = model.apply({"params": params}, input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                          deterministic=deterministic, rngs={"dropout": rng})
        nll = -jnp.take_along_axis(jax.nn.log_softmax(out["logits"]), b["labels"][:, None], axis=-1)[:, 0]
        return nll.mean(), {"loss": nll.sum(), "weight": jnp.asarray(nll.shape[0], jnp.float32)}

    params = nn.unbox(model.init(jax.random.key(1), input_ids=batch["input_ids"][:1]))["params"]
    # SGD: a parameter's change is linear in its gradient (Adam's first steps would turn the
    # rounding noise of near-zero gradients into full-size updates)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5, momentum=0.9))
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(2)))
    shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), state)
    step = jit_train_step(make_train_step(loss_fn, tx), shardings, None, mesh)
    batch = jax.tree.map(jnp.asarray, batch)
    compiled = step.lower(state, batch).compile()
    metrics = []
    for _ in range(2):
        state, m = compiled(state, batch)
        metrics.append({k: float(v) for k, v in m.items()})
    return compiled.as_text(), metrics, jax.device_get(state.params)


def test_train_step_dots_on_eigen_same_values(monkeypatch):
    model, batch = build_task_model(*_tiny_bert(), "sequence_classification", 3), _tiny_batch()
    mesh = mesh_lib.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=jax.devices("cpu")[:1])
    runs = {}
    for choice in ("eigen", "xla"):
        monkeypatch.setenv(co.CPU_DOTS_ENV, choice)
        runs[choice] = _train_two_steps(model, batch, mesh)
    eigen_dots, xla_dots = _dots_by_library(runs["eigen"][0]), _dots_by_library(runs["xla"][0])
    # every GEMM of the step (forward, backward) on Eigen; XLA's default runs some on YNNPACK.
    # YNNPACK keeps its reduction fusions, attention scores and their row sums among them.
    assert eigen_dots["ynn_gemm"] == 0 and eigen_dots["other"] >= 20, eigen_dots
    assert xla_dots["ynn_gemm"] >= 10, xla_dots
    assert eigen_dots["ynn_reduce"] <= xla_dots["ynn_reduce"] + 2
    for a, b in zip(runs["eigen"][1], runs["xla"][1]):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-5, err_msg=k)
    flat_e = jax.tree_util.tree_leaves_with_path(runs["eigen"][2])
    flat_x = jax.tree.leaves(runs["xla"][2])
    for (path, a), b in zip(flat_e, flat_x):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # the two steps did move the parameters
    before = nn.unbox(model.init(jax.random.key(1), input_ids=batch["input_ids"][:1]))["params"]
    assert float(np.abs(runs["eigen"][2]["classifier"]["out"]["kernel"]
                        - before["classifier"]["out"]["kernel"]).max()) > 1e-4


def test_encoder_forward_dots_on_eigen(monkeypatch):
    from jaxbert.inference import sentence_encoder as enc

    batch = _tiny_batch()
    cfg, backbone_cls = _tiny_bert()
    backbone = backbone_cls(cfg)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    params = nn.unbox(backbone.init(jax.random.key(3), ids[:1]))["params"]
    out = {}
    for choice in ("eigen", "xla"):
        monkeypatch.setenv(co.CPU_DOTS_ENV, choice)
        enc._jitted_embed.cache_clear()
        f = enc._jitted_embed(backbone, ("mean",))
        counts = _dots_by_library(f.lower(params, ids, mask, normalize=True).compile().as_text())
        assert (counts["ynn_gemm"] == 0) == (choice == "eigen"), (choice, counts)
        out[choice] = np.asarray(f(params, ids, mask, normalize=True))
    enc._jitted_embed.cache_clear()
    np.testing.assert_allclose(out["eigen"], out["xla"], atol=1e-6)
    assert np.abs(out["eigen"]).max() > 0.01
