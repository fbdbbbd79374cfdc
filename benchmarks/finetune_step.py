r"""jaxbert's fine-tuning train step vs a PyTorch reference step, steps per second (CPU).

What is timed, per shape (``minilm``: the real all-MiniLM-L6-v2 weights; ``bert-base``: the
registry preset, randomly initialised), on one random batch ``[batch, length]`` (every token
real, random labels), dropout on (training mode) in both:

* **jaxbert**: the engine's own step -- ``make_train_step(ClassificationTask.loss_fn, tx)``
  jitted by ``jit_train_step`` (explicit shardings, state donated) on a 1-device mesh, with
  ``tx`` from ``make_optimizer`` on the ``rotten_tomatoes`` config's ``optim`` section (AdamW,
  decay mask, global-norm clip 1.0, linear warmup/decay schedule), with the engine's compiler
  options (on CPU the dots run on Eigen, see ``jaxbert/compiler_options.py``; recorded as
  ``compiler_options``; ``--jax-variant "xla=JAXBERT_CPU_DOTS=xla"`` gives XLA's default).
  The step is compiled ahead of time (``.lower().compile()``, reported as ``compile_s``), run
  ``--warmup`` times, then ``--steps`` times, blocking on the new state after each step.
* **torch**: ``transformers.BertForSequenceClassification`` with the same config, ``torch.optim.AdamW``
  (same betas/eps/weight decay, biases and LayerNorm not decayed), ``get_linear_schedule_with_warmup``;
  one step = ``zero_grad -> forward(labels=...) -> backward -> clip_grad_norm_(1.0) -> step -> scheduler.step``.

Host memory: both children call ``jaxbert.host_memory.keep_freed_host_memory()`` first, as the
launcher does (freed memory kept for reuse, CPU steps on the calling thread; recorded as
``host_malloc``); ``--torch-host-malloc system`` leaves torch on glibc's defaults and
``--jax-variant "system=JAXBERT_HOST_MALLOC=system"`` jaxbert.

Each framework runs in its own child process (no thread pool of one framework idles or spins
next to the other; XLA flags can differ per jax variant), one after the other on the same
machine in the same invocation. Threads: ``--threads k`` (default: all usable cores) pins each
child to ``k`` cores (``sched_setaffinity`` before the frameworks start); XLA:CPU sizes its
intra-op pool to the usable cores, and torch gets ``torch.set_num_threads(k)``, so both use
``k`` threads.

Usage::

    python benchmarks/finetune_step.py                         # minilm,bert-base, 32x128, 20 steps
    python benchmarks/finetune_step.py --shapes minilm --steps 3
    python benchmarks/finetune_step.py --rounds 2 --jax-variant default= \
        --jax-variant "onednn=--xla_cpu_use_onednn=true" --jax-variant "rbg=JAX_DEFAULT_PRNG_IMPL=rbg" \
        --jax-variant "dpa=model.attention_implementation=dot_product_attention"

Output: JSON on stdout and in ``benchmarks/results/finetune_step.json`` (``--name`` to change):
per shape, steps/s of each framework (mean over the timed steps and from the median step),
the ratio jaxbert/torch, compile time, peak RSS, plus the machine (CPU, cores, load, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.ensure_repo_on_path()

SHAPES = ("minilm", "bert-base")
RESULT_MARK = "@@RESULT@@ "


# ------------------------------------------------------------------------------------ children


def _random_batch(batch: int, length: int, vocab: int, seed: int):
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(batch, length), dtype=np.int32)
    ids[:, 0] = 101  # [CLS]
    ids[:, -1] = 102  # [SEP]
    return {"input_ids": ids,
            "attention_mask": np.ones((batch, length), np.int32),
            "token_type_ids": np.zeros((batch, length), np.int32),
            "labels": rng.integers(0, 2, size=(batch,), dtype=np.int32)}


def _model_config(shape: str, overrides: dict | None = None):
    """(jaxbert BertConfig, HF directory or None) of a shape."""
    from jaxbert.models import registry
    overrides = overrides or {}
    if shape == "minilm":
        from jaxbert import assets
        from jaxbert.convert import hf as hf_convert
        from jaxbert.models.bert.model import BertConfig
        path = Path(assets.fetch("minilm"))
        return BertConfig.from_hf_dict(hf_convert.read_hf_config(path), **overrides), path
    if shape in registry.names(kind="encoder"):
        return registry.get(shape, **overrides)[0], None
    raise ValueError(f"unknown shape {shape!r}; known: minilm, {', '.join(registry.names(kind='encoder'))}")


def _optim_config(total_steps: int):
    from experiments.configs.finetune_classification import get_config
    from jaxbert.train import optim as optim_lib
    cfg = get_config("rotten_tomatoes")
    ocfg = optim_lib.resolve_optim_config(cfg.optim)
    ocfg.total_steps = total_steps
    return cfg, ocfg


def _peak_rss_gib() -> float:
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _summarise(times: list[float], cpu_times: list[float]) -> dict:
    """Wall-clock statistics of the timed steps, plus process CPU seconds per step (all threads):
    under contention from other processes wall time inflates much more than CPU time."""
    import statistics
    total = sum(times)
    return {"steps": len(times), "timed_s": round(total, 4),
            "step_cpu_s_mean": round(sum(cpu_times) / len(cpu_times), 4),
            "step_s_mean": round(total / len(times), 4),
            "step_s_median": round(statistics.median(times), 4),
            "step_s_min": round(min(times), 4), "step_s_max": round(max(times), 4),
            "steps_per_s": round(len(times) / total, 4),
            "steps_per_s_median": round(1.0 / statistics.median(times), 4)}


def child_jax(args) -> dict:
    from jaxbert.host_memory import keep_freed_host_memory
    host_malloc = keep_freed_host_memory()  # as the launcher does, before jax starts its threads
    import jax
    import numpy as np
    import flax.linen as nn
    from jaxbert.compiler_options import compiler_options
    from jaxbert.convert import hf as hf_convert
    from jaxbert.models import build_task_model, registry
    from jaxbert.tasks.classification import MODEL_INPUTS, ClassificationTask
    from jaxbert.train import mesh as mesh_lib
    from jaxbert.train import optim as optim_lib
    from jaxbert.train.state import create_sharded_state, state_shardings
    from jaxbert.train.step import jit_train_step, make_train_step

    t_setup = time.perf_counter()
    overrides = dict(kv.split("=", 1) for kv in args.model_override)
    overrides = {k: _parse_value(v) for k, v in overrides.items()}
    mcfg, path = _model_config(args.shape, overrides)
    total = args.warmup + args.steps + 1
    cfg, ocfg = _optim_config(max(total, 100))
    if path is not None:
        pre = hf_convert.load_pretrained(path, task="sequence_classification", num_labels=2, seed=args.seed,
                                         **overrides)
        model, params = pre.model, pre.params
    else:
        _, backbone = registry.get(args.shape, **overrides)
        model, params = build_task_model(mcfg, backbone, "sequence_classification", 2), None
    # The engine's classification loss, without building the data side of the task.
    task = ClassificationTask.__new__(ClassificationTask)
    task.model, task.config = model, cfg
    sample = {k: np.zeros((1, args.length), np.int32) for k in MODEL_INPUTS}
    mesh = mesh_lib.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=jax.devices()[:1])
    rules = tuple(tuple(r) for r in cfg.logical_axis_rules)
    params_abstract = nn.unbox(jax.eval_shape(lambda r: model.init(r, **sample), jax.random.key(0))["params"])
    tx, _ = optim_lib.make_optimizer(ocfg, params_abstract)
    # As Trainer: shardings are derived outside the mesh context, the state and steps inside it.
    shardings = state_shardings(model, tx, mesh, rules, sample)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = create_sharded_state(model, tx, shardings, args.seed, sample, params=params)
        step_fn = jit_train_step(make_train_step(task.loss_fn, tx, 1), shardings.state, None, mesh)
        batch = mesh_lib.shard_batch(_random_batch(args.batch, args.length, mcfg.vocab_size, args.seed),
                                     mesh, rules)
        jax.block_until_ready((state, batch))
        setup_s = time.perf_counter() - t_setup
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready((state, m))
        first_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            state, m = compiled(state, batch)
        jax.block_until_ready((state, m))
        times, cpu_times = [], []
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            state, m = compiled(state, batch)
            jax.block_until_ready((state, m))
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        loss = float(m["loss"] / m["weight"])
    return {"framework": "jaxbert", "num_params": num_params, "setup_s": round(setup_s, 3),
            "compile_s": round(compile_s, 3), "first_step_s": round(first_s, 4), **_summarise(times, cpu_times),
            "step_times_s": [round(t, 4) for t in times], "final_loss": loss, "peak_rss_gib": _peak_rss_gib(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "compiler_options": compiler_options(mesh),
            "host_malloc": host_malloc, "model_overrides": overrides,
            "prng_impl": str(jax.config.jax_default_prng_impl),
            "attention_implementation": mcfg.attention_implementation,
            "jax_devices": [str(d) for d in jax.devices()]}


def torch_no_decay(name: str) -> bool:
    """jaxbert's ``DEFAULT_NO_DECAY_REGEX`` in HF names: biases and LayerNorm parameters are not decayed."""
    return name.endswith("bias") or "LayerNorm" in name


def child_torch(args) -> dict:
    # The same host-memory settings as the jaxbert child (JAXBERT_HOST_MALLOC from --torch-host-malloc):
    # torch's large activations are mmap-ed and faulted in every step under glibc's defaults too.
    from jaxbert.host_memory import keep_freed_host_memory
    host_malloc = keep_freed_host_memory()
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_setup = time.perf_counter()
    mcfg, path = _model_config(args.shape)
    total = args.warmup + args.steps + 1
    _, ocfg = _optim_config(max(total, 100))
    kw = {"attn_implementation": args.torch_attn} if args.torch_attn else {}
    if path is not None:
        model = transformers.BertForSequenceClassification.from_pretrained(str(path), num_labels=2, **kw)
    else:
        hf_cfg = transformers.BertConfig(**{k: v for k, v in mcfg.to_hf_dict().items() if k != "architectures"},
                                         num_labels=2)
        model = transformers.BertForSequenceClassification(hf_cfg, **kw) if kw else \
            transformers.BertForSequenceClassification(hf_cfg)
    model.train()
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not torch_no_decay(n)], "weight_decay": ocfg.weight_decay},
              {"params": [p for n, p in named if torch_no_decay(n)], "weight_decay": 0.0}]
    opt_kw = {} if args.torch_foreach is None else {"foreach": args.torch_foreach}
    opt = torch.optim.AdamW(groups, lr=ocfg.learning_rate, betas=(ocfg.b1, ocfg.b2), eps=ocfg.eps, **opt_kw)
    from jaxbert.train import optim as optim_lib
    sched = transformers.get_linear_schedule_with_warmup(opt, optim_lib.warmup_steps(ocfg), ocfg.total_steps)
    b = {k: torch.from_numpy(v).long()
         for k, v in _random_batch(args.batch, args.length, mcfg.vocab_size, args.seed).items()}
    setup_s = time.perf_counter() - t_setup
    num_params = sum(p.numel() for p in model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                    token_type_ids=b["token_type_ids"], labels=b["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg.grad_clip_norm)
        opt.step()
        sched.step()
        return out.loss.detach()

    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        step()
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {"framework": "torch", "num_params": num_params, "setup_s": round(setup_s, 3),
            "first_step_s": round(first_s, 4), **_summarise(times, cpu_times),
            "step_times_s": [round(t, 4) for t in times], "final_loss": loss.item(), "peak_rss_gib": _peak_rss_gib(),
            "torch_num_threads": torch.get_num_threads(), "torch_num_interop_threads": torch.get_num_interop_threads(),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "adamw_foreach": args.torch_foreach, "host_malloc": host_malloc, "mkldnn": torch.backends.mkldnn.is_available(),
            "torch_parallel_info": torch.__config__.parallel_info().splitlines()[:6]}


def run_child(args) -> None:
    if args.threads and args.threads < common.usable_cores():
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    fn = child_jax if args.framework == "jaxbert" else child_torch
    out = fn(args)
    out.update(shape=args.shape, batch=args.batch, length=args.length, threads=args.threads,
               usable_cores=common.usable_cores())
    print(RESULT_MARK + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------ parent


def _parse_variants(items: list[str] | None) -> list[dict]:
    """``["NAME=SPEC", ...]`` -> ``[{name, xla_flags, env, model}]``.

    ``SPEC`` is a space-separated list of tokens: ``--xla_...`` tokens form ``XLA_FLAGS``;
    ``model.KEY=VALUE`` tokens are model-config overrides (``model.attention_implementation=
    dot_product_attention``); ``VAR=VALUE`` tokens (upper-case ``VAR``) are environment variables
    (``JAX_DEFAULT_PRNG_IMPL=rbg``). An empty SPEC inherits the environment unchanged.
    """
    if not items:
        return [{"name": "default", "xla_flags": None, "env": {}, "model": {}}]
    out = []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--jax-variant expects NAME=SPEC (SPEC may be empty), got {item!r}")
        flags, env, model = [], {}, {}
        for tok in spec.split():
            key, eq, value = tok.partition("=")
            if tok.startswith("--"):
                flags.append(tok)
            elif key.startswith("model.") and eq:
                model[key[len("model."):]] = value
            elif eq and key.isupper():
                env[key] = value
            else:
                raise SystemExit(f"--jax-variant {name}: cannot read token {tok!r} (want --xla_flag, "
                                 "model.KEY=VALUE or ENV_VAR=VALUE)")
        out.append({"name": name, "xla_flags": " ".join(flags) if flags else None, "env": env, "model": model})
    return out


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _spawn(args, framework: str, shape: str, variant: dict | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--framework", framework, "--shapes", shape,
           "--batch", str(args.batch), "--length", str(args.length), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.torch_attn:
        cmd += ["--torch-attn", args.torch_attn]
    if args.torch_foreach is not None:
        cmd += ["--torch-foreach", str(args.torch_foreach).lower()]
    env = dict(os.environ)
    if framework == "torch":
        env["JAXBERT_HOST_MALLOC"] = args.torch_host_malloc
    if variant is not None:
        if variant["xla_flags"] is not None:
            env["XLA_FLAGS"] = variant["xla_flags"]
        env.update(variant["env"])
        for key, value in variant["model"].items():
            cmd += ["--model-override", f"{key}={value}"]
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    load_before = common.load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode or not lines:
        raise RuntimeError(f"{framework} child for {shape} failed (rc={proc.returncode}); stdout:\n{proc.stdout[-4000:]}")
    res = json.loads(lines[-1][len(RESULT_MARK):])
    res.update(process_wall_s=round(wall, 2), load_before=load_before, load_after=common.load_average())
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma list: minilm and/or registry presets")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per framework and shape")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) one")
    p.add_argument("--threads", type=int, default=common.usable_cores(),
                   help="cores per child (affinity) = torch threads = XLA:CPU pool size (default: all usable)")
    p.add_argument("--rounds", type=int, default=1, help="repeat torch/jaxbert (order alternates per round)")
    p.add_argument("--frameworks", default="torch,jaxbert")
    p.add_argument("--jax-variant", action="append", metavar="NAME=SPEC",
                   help="run the jaxbert child once per variant (repeatable; the first is the headline). SPEC: "
                        "space-separated --xla_* flags (XLA_FLAGS), ENV_VAR=VALUE, model.KEY=VALUE. "
                        "Default: one variant 'default' inheriting the environment")
    p.add_argument("--torch-attn", default=None, help="transformers attn_implementation (default: its own, sdpa)")
    p.add_argument("--torch-foreach", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                   help="torch AdamW foreach (default: torch's choice, the for-loop on CPU)")
    from jaxbert.host_memory import HOST_MALLOC_CHOICES
    p.add_argument("--torch-host-malloc", choices=HOST_MALLOC_CHOICES, default=HOST_MALLOC_CHOICES[0],
                   help="the torch child's host-memory setting (jaxbert/host_memory.py); default keep, as jaxbert")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="finetune_step", help="result file benchmarks/results/<name>.json")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-override", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        args.shape = args.shapes
        run_child(args)
        return

    if args.threads > common.usable_cores():
        raise SystemExit(f"--threads {args.threads} exceeds the {common.usable_cores()} usable cores")
    shapes = [s for s in args.shapes.split(",") if s]
    frameworks = [f for f in args.frameworks.split(",") if f]
    if set(frameworks) - {"torch", "jaxbert"}:
        raise SystemExit(f"--frameworks takes torch,jaxbert; got {args.frameworks}")
    variants = _parse_variants(args.jax_variant)
    machine_start = common.machine()
    common.say(f"load average at start: {machine_start['load_average']} on {machine_start['usable_cores']} cores")

    results = {}
    for shape in shapes:
        runs = {"torch": [], **{f"jaxbert:{v['name']}": [] for v in variants}}
        for r in range(args.rounds):
            order = []
            if "torch" in frameworks:
                order.append(("torch", None, "torch"))
            if "jaxbert" in frameworks:
                order += [("jaxbert", v, f"jaxbert:{v['name']}") for v in variants]
            if r % 2:
                order.reverse()
            for framework, variant, key in order:
                common.say(f"{shape}: {key} round {r + 1}/{args.rounds} ...")
                res = _spawn(args, framework, shape, variant)
                common.say(f"{shape}: {key}: {res['steps_per_s']:.3f} steps/s "
                           f"(median step {res['step_s_median']:.3f}s"
                           + (f", compile {res['compile_s']:.1f}s" if "compile_s" in res else "") + ")")
                runs[key].append(res)
        runs = {k: v for k, v in runs.items() if v}
        summary = {}
        for key, rs in runs.items():
            best = max(rs, key=lambda x: x["steps_per_s"])
            summary[key] = {"steps_per_s": best["steps_per_s"], "steps_per_s_median": best["steps_per_s_median"],
                            "steps_per_s_all_rounds": [x["steps_per_s"] for x in rs],
                            "cpu_s_per_step": best["step_cpu_s_mean"],
                            **({"compile_s": best["compile_s"]} if "compile_s" in best else {}),
                            "examples_per_s": round(best["steps_per_s"] * args.batch, 2),
                            "tokens_per_s": round(best["steps_per_s"] * args.batch * args.length, 1),
                            "peak_rss_gib": best["peak_rss_gib"], "num_params": best["num_params"]}
        if "torch" in summary:
            for key in summary:
                if key.startswith("jaxbert:"):
                    summary[key]["ratio_vs_torch"] = round(summary[key]["steps_per_s"] / summary["torch"]["steps_per_s"], 3)
                    summary[key]["ratio_vs_torch_median"] = round(
                        summary[key]["steps_per_s_median"] / summary["torch"]["steps_per_s_median"], 3)
                    # torch CPU seconds per jaxbert CPU second for one step (> 1: jaxbert needs less CPU).
                    # Less sensitive to other processes than wall time, but spinning threads count too.
                    summary[key]["cpu_ratio_torch_over_jaxbert"] = round(
                        summary["torch"]["cpu_s_per_step"] / summary[key]["cpu_s_per_step"], 3)
        headline = f"jaxbert:{variants[0]['name']}"
        results[shape] = {"summary": summary,
                          "ratio_jaxbert_over_torch": summary.get(headline, {}).get("ratio_vs_torch"),
                          "runs": runs}
        common.say(f"{shape}: " + ", ".join(f"{k} {v['steps_per_s']:.3f} steps/s" for k, v in summary.items())
                   + (f"; ratio {results[shape]['ratio_jaxbert_over_torch']}" if results[shape]['ratio_jaxbert_over_torch'] else ""))

    payload = {
        "benchmark": "finetune_step",
        "created": common.now_iso(),
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "settings": {"shapes": shapes, "batch": args.batch, "length": args.length, "steps": args.steps,
                     "warmup": args.warmup, "threads": args.threads, "rounds": args.rounds,
                     "jax_variants": variants,
                     "torch_attn": args.torch_attn, "torch_adamw_foreach": args.torch_foreach,
                     "torch_host_malloc": args.torch_host_malloc, "seed": args.seed,
                     "steps_per_s": "timed steps / their total wall time (best round); *_median: 1 / median step",
                     "cpu_s_per_step": "process CPU seconds (all threads) per timed step, same round",
                     "threads_note": "each child pinned to `threads` cores; XLA:CPU uses every usable core, "
                                     "torch.set_num_threads(threads)"},
        "target": "jaxbert steps/s >= torch steps/s (ratio >= 1.0)",
        "results": results,
        "machine": machine_start,
        "load_average_end": common.load_average(),
    }
    common.write_result(args.name, payload, args.out_dir)


if __name__ == "__main__":
    main()
