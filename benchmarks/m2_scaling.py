"""Forward time and peak memory vs sequence length: M2-BERT (long convolutions) vs an attention encoder.

What is measured, for each model and each length ``L`` (batch 1, random token ids, no padding,
inference: ``deterministic=True``, the jitted backbone forward returning ``last_hidden_state``):

* ``time_s``: median wall time of ``--repeats`` forward calls after one warm-up call (compile
  excluded, ``block_until_ready``);
* ``xla_temp_bytes``: XLA's buffer assignment for the compiled forward (``memory_analysis()``:
  temporaries; arguments = parameters and ids, and outputs are listed apart) -- the activation
  working set, deterministic, independent of allocator noise;
* ``forward_peak_rss_bytes``: the peak resident memory of the process *while it runs the forward*:
  after compiling, freed heap is returned to the OS (``malloc_trim``) and the kernel's high-water
  mark is reset (``/proc/self/clear_refs``); the peak is then read after the forward calls. It
  counts the parameters, the runtime and the forward's working set, not the compiler's or
  initialisation's transient memory. ``rss_before_forward_bytes`` is the resident size at the reset.
  **The memory target is judged on this column.** (Linux only; absent elsewhere.)
* ``peak_rss_bytes``: the peak resident memory of the whole worker process (``ru_maxrss``):
  initialisation and XLA compilation included, which dominate at short lengths.
  Each (model, length) runs in its own subprocess; ``--in-process`` skips that (no whole-process peak).

Models (same depth, width 768, batch 1):

* ``m2``: ``--m2-preset`` (default ``m2-bert-80m``) with ``max_position_embeddings = L``
  (its learned position table; the filters are length-agnostic);
* ``attention``: the configurable encoder's ``--attention-preset`` (default ``bert-base``, 12
  layers, 12 heads, width 768, ``max_position_embeddings = L``), XLA attention (``softmax(QK^T)V``
  materialises ``[heads, L, L]`` scores per layer).

An attention length whose score matrix (``heads x L^2 x 4`` bytes, times ~3 live copies) would
exceed ``--attention-memory-fraction`` of the machine's memory is skipped and recorded as such.

Derived: per length the ratios ``attention / m2`` of time and of both memory measures, and for
each model the exponent ``a`` of a least-squares fit ``time ~ c L^a`` over the lengths >=
``--fit-from`` (default 1024, where fixed per-call costs stop dominating).

Targets (issue 5, this CPU): at 8k tokens M2 >= 4x faster than attention and >= 4x less memory
(forward peak RSS); M2's exponent <= 1.2.

Commands (from the repository root; run on a quiet machine, nothing else running)::

    .venv/bin/python benchmarks/m2_scaling.py                     # 512 .. 32k, both models
    .venv/bin/python benchmarks/m2_scaling.py --lengths 512,1024,2048,4096,8192
    # quick validation (seconds): tiny models
    .venv/bin/python benchmarks/m2_scaling.py --lengths 128,256 --m2-preset m2-bert-tiny \\
        --attention-preset bert-tiny --repeats 1 --out-dir /tmp/m2bench

Output: ``benchmarks/results/m2_scaling.json`` (``--out-dir`` to change), also printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.ensure_repo_on_path()

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)))
    p.add_argument("--models", default="m2,attention")
    p.add_argument("--m2-preset", default="m2-bert-80m")
    p.add_argument("--attention-preset", default="bert-base", help="a registry preset of the configurable encoder")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fit-from", type=int, default=1024)
    p.add_argument("--attention-memory-fraction", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per (model, length) worker")
    p.add_argument("--in-process", action="store_true", help="no subprocess per point (no whole-process peak RSS)")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "model:length" (internal)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- one point


def build(model: str, length: int, args):
    from jaxbert.models import registry
    from jaxbert.models.m2 import model as m2
    from jaxbert.models.transformer import model as encoder

    if model == "m2":
        cfg, _ = registry.get(args.m2_preset, max_position_embeddings=length, long_conv_l_max=length,
                              hidden_dropout_prob=0.0, add_pooling_layer=False, dtype=args.dtype)
        return m2.M2Model(cfg), cfg
    if model == "attention":
        cfg, _ = registry.get(args.attention_preset, max_position_embeddings=length, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0, add_pooling_layer=False, dtype=args.dtype)
        return encoder.Encoder(cfg), cfg
    raise ValueError(f"unknown model {model!r}; known: m2, attention")


def attention_fits(length: int, args) -> tuple[bool, float]:
    from jaxbert.models import registry

    heads = registry.get(args.attention_preset)[0].num_attention_heads
    need = 3 * heads * length * length * 4
    total = (common.memory_gib() or 0) * 2**30
    return need <= args.attention_memory_fraction * total, need


def _proc_status_bytes(key: str) -> int | None:
    """``VmHWM`` / ``VmRSS`` of this process from ``/proc/self/status`` in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> int | None:
    """Return freed heap to the OS, reset the kernel's peak-RSS mark; the resident bytes now (None: unsupported)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_bytes("VmRSS")


def measure(model: str, length: int, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    module, cfg = build(model, length, args)
    ids = jnp.asarray(np.random.default_rng(0).integers(1000, 2000, size=(1, length)), jnp.int32)
    t0 = time.perf_counter()
    params = jax.jit(module.init)(jax.random.key(0), ids[:, :min(length, 8)])["params"]
    n_params = sum(x.size for x in jax.tree.leaves(params))
    fwd = jax.jit(lambda p, x: module.apply({"params": p}, x).last_hidden_state)
    compiled = fwd.lower(params, ids).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the reset below clears ru_maxrss too
    rss_before = _reset_peak_rss()
    out = compiled(params, ids)
    out.block_until_ready()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        compiled(params, ids).block_until_ready()
        times.append(time.perf_counter() - t)
    forward_peak = _proc_status_bytes("VmHWM") if rss_before is not None else None
    row = {"model": model, "length": length, "params": int(n_params), "time_s": statistics.median(times),
           "times_s": times, "init_and_compile_s": compile_s, "finite": bool(jnp.all(jnp.isfinite(out)))}
    if not args.in_process:  # the worker's lifetime peak: set-up (init + compile) or forward, whichever is larger
        row["peak_rss_bytes"] = max(setup_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if forward_peak is not None:
        row.update(rss_before_forward_bytes=rss_before, forward_peak_rss_bytes=forward_peak)
    if mem is not None:
        row.update(xla_temp_bytes=int(mem.temp_size_in_bytes), xla_argument_bytes=int(mem.argument_size_in_bytes),
                   xla_output_bytes=int(mem.output_size_in_bytes))
    return row


def run_worker(spec: str, args) -> None:
    model, length = spec.split(":")
    row = measure(model, int(length), args)
    print("M2SCALING " + json.dumps(row), flush=True)


def run_point(model: str, length: int, args, argv: list[str]) -> dict:
    if args.in_process:
        return measure(model, length, args)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", f"{model}:{length}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "length": length, "error": f"timeout after {args.timeout:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("M2SCALING "):
            return json.loads(line[len("M2SCALING "):])
    tail = (proc.stderr or "").strip().splitlines()[-5:]
    return {"model": model, "length": length, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


# ----------------------------------------------------------------------------- analysis


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(time) on log(length)."""
    if len(points) < 2:
        return None
    xs = [math.log(l) for l, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else None


def summarize(rows: list[dict], args) -> dict:
    ok = {(r["model"], r["length"]): r for r in rows if "time_s" in r}
    ratios = []
    for length in sorted({r["length"] for r in rows}):
        a, m = ok.get(("attention", length)), ok.get(("m2", length))
        if a and m:
            entry = {"length": length, "time_attention_over_m2": a["time_s"] / m["time_s"]}
            for key in ("xla_temp_bytes", "forward_peak_rss_bytes", "peak_rss_bytes"):
                if key in a and key in m and m[key]:
                    entry[f"{key}_attention_over_m2"] = a[key] / m[key]
            ratios.append(entry)
    exponents = {}
    for model in ("m2", "attention"):
        pts = sorted((l, r["time_s"]) for (mm, l), r in ok.items() if mm == model and l >= args.fit_from)
        exponents[model] = {"exponent": fit_exponent(pts), "fit_lengths": [l for l, _ in pts]}
    at8k = next((r for r in ratios if r["length"] == 8192), None)
    targets = {
        "m2_exponent_le_1.2": None if exponents["m2"]["exponent"] is None else exponents["m2"]["exponent"] <= 1.2,
        "speedup_at_8k_ge_4": None if at8k is None else at8k["time_attention_over_m2"] >= 4,
        "memory_ratio_at_8k_ge_4": None if at8k is None or "forward_peak_rss_bytes_attention_over_m2" not in at8k
        else at8k["forward_peak_rss_bytes_attention_over_m2"] >= 4,
    }
    return {"ratios": ratios, "exponents": exponents, "targets": targets}


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, args)
        return {}
    lengths = [int(x) for x in args.lengths.split(",") if x]
    models = [m for m in args.models.split(",") if m]
    rows = []
    for length in lengths:
        for model in models:
            if model == "attention":
                fits, need = attention_fits(length, args)
                if not fits:
                    common.say(f"attention L={length}: skipped (scores need ~{need / 2**30:.1f} GiB)")
                    rows.append({"model": model, "length": length, "skipped": f"scores need ~{need / 2**30:.1f} GiB"})
                    continue
            common.say(f"{model} L={length} ...")
            row = run_point(model, length, args, argv)
            common.say(f"{model} L={length}: " + (f"{row['time_s']:.3f}s" if "time_s" in row else row.get("error", "")))
            rows.append(row)
    payload = {"benchmark": "m2_scaling", "date": common.now_iso(), "machine": common.machine(),
               "settings": {k: v for k, v in vars(args).items() if k != "worker"}, "rows": rows,
               **summarize(rows, args)}
    common.write_result("m2_scaling", payload, args.out_dir)
    return payload


if __name__ == "__main__":
    main()
