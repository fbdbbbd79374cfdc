r"""PEFT methods vs full fine-tuning on real data: cost, accuracy, checkpoint size, forgetting.

For every dataset and method (``experiments/configs/peft.py`` variants; ``full`` is the baseline,
measured in the same process), fine-tunes all-MiniLM-L6-v2 with the engine itself
(``jaxbert.train.loop.Trainer(config, workdir).run()``) and records

* **trainable parameters**: count and % of the base classification model (for HFT: the half
  trained in the first stage; the other half trains in later stages);
* **peak memory** of the compiled train step: XLA's memory analysis of the jitted step
  (arguments + outputs - aliased + temporaries), the same number on CPU and GPU; plus the
  optimizer-state size;
* **step time**: median wall time of ``--time-steps`` train steps on one fixed training batch after
  training (compiled, blocking on the result);
* **test accuracy** of the final model;
* **adapter checkpoint size** (``jaxbert.peft.checkpoint.save_adapter``; for full fine-tuning the
  HF ``model.safetensors`` the engine exports);
* **forgetting** (``--forgetting-methods``, default full, hft, lora): zero-shot nDCG@10 on the
  wordnet_defs test queries against ``corpus_20k`` and the Spearman correlation on the lee
  document-similarity set, from mean-pooled encoder outputs (:mod:`jaxbert.peft.forgetting`),
  before (pretrained MiniLM) and after fine-tuning.

Usage::

    python benchmarks/peft_table.py                                      # full budget (slow on CPU)
    python benchmarks/peft_table.py --train-limit 512 --epochs 1 --forgetting-corpus-limit 2000
    python benchmarks/peft_table.py --markdown-only                      # JSON -> docs/peft_table.md

Flags: ``--datasets`` (rotten_tomatoes,trec), ``--methods`` (``all`` or a comma list of
variants), ``--train-limit`` (first N training rows; 0 = all), ``--epochs``, ``--batch-size``,
``--time-steps``, ``--forgetting-methods``, ``--forgetting-corpus-limit`` (documents besides the
relevant ones; 0 = the whole corpus_20k), ``--seed``, ``--out`` (JSON path), ``--markdown``
(markdown path). Learning rates are each method's default (``jaxbert/peft/__init__.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.ensure_repo_on_path()

DEFAULT_OUT = common.RESULTS_DIR / "peft_table.json"
DEFAULT_MD = common.REPO_ROOT / "docs" / "peft_table.md"
FORGETTING_DEFAULT = ("full", "hft", "lora")


def _subset(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if n and i >= n:
                break
            g.write(line)


def _tree_bytes(tree) -> int:
    import jax
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def run_one(variant: str, dataset: str, args, data_root: Path, tmp: Path, forgetting_data, before_scores) -> dict:
    import jax
    import numpy as np

    from experiments.configs.peft import get_config, VARIANTS
    from jaxbert.peft import flatten
    from jaxbert.peft.checkpoint import save_adapter
    from jaxbert.train import mesh as mesh_lib
    from jaxbert.train.loop import Trainer

    c = get_config(f"{variant},{dataset}")
    if args.train_limit:
        sub = tmp / "data" / dataset / "train.jsonl"
        if not sub.exists():
            _subset(Path(c.data.train), sub, args.train_limit)
        c.data.train = str(sub)
    c.num_epochs = float(args.epochs)
    c.batch_size = args.batch_size
    c.seed = args.seed
    c.eval_splits = ("test",)
    c.data.validation = None
    c.checkpoint.best_metric = "test/accuracy"
    c.progress, c.tensorboard, c.export_hf = False, False, False
    c.log_every = 10 ** 6
    workdir = tmp / f"{dataset}_{variant}"
    common.say(f"[{dataset}] {variant}: training (lr {c.optim.learning_rate:g})")
    load_before = common.load_average()
    t0 = time.perf_counter()
    trainer = Trainer(c, workdir)
    result = trainer.run()
    train_s = time.perf_counter() - t0
    state = trainer.final_state
    task = trainer.task
    params = state.params
    pm = task.peft
    flat = flatten(params)
    if pm is None:
        base_total = trainable = int(sum(np.prod(v.shape) for v in flat.values()))
        added = 0
    else:
        counts = pm.num_params(params)
        base_total, added, trainable = counts["base"], counts["added"], counts["trainable"]

    # Checkpoint size: the adapter, or the whole model for full fine-tuning.
    if pm is None:
        export = task.export(params, workdir / "export")
        ckpt_bytes = (export / "model.safetensors").stat().st_size
    else:
        ckpt_bytes = save_adapter(workdir / "adapter", params, pm.method).size_bytes

    forgetting = None
    if forgetting_data is not None and variant in args.forgetting_methods:
        from jaxbert.peft.forgetting import general_scores
        merged = params if pm is None else pm.merge(jax.device_get(params))
        common.say(f"[{dataset}] {variant}: forgetting probes")
        after = general_scores(merged["encoder"], task.model_config, task.tokenizer, forgetting_data)
        forgetting = {"before": before_scores, "after": after,
                      "delta": {k: after[k] - before_scores[k] for k in after}}

    # Step time and memory on one fixed training batch (consumes the final state: last).
    batch = next(task.train_iterator(c.batch_size, c.seed + 1))
    gbatch = mesh_lib.shard_batch(batch, trainer.mesh, trainer.rules)
    with jax.set_mesh(trainer.mesh):
        compiled = trainer.train_step.lower(state, gbatch).compile()
        mem = compiled.memory_analysis()
        peak = None
        if mem is not None:
            peak = int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                       + mem.temp_size_in_bytes)
        opt_bytes = _tree_bytes(state.opt_state)
        times = []
        st = state
        st, m = trainer.train_step(st, gbatch)
        jax.block_until_ready(m)
        for _ in range(args.time_steps):
            t = time.perf_counter()
            st, m = trainer.train_step(st, gbatch)
            jax.block_until_ready((st.params, m))
            times.append(time.perf_counter() - t)

    row = {
        "dataset": dataset, "variant": variant, "method": VARIANTS[variant][0],
        "learning_rate": float(c.optim.learning_rate),
        "peft_options": pm.method.to_config()["options"] if pm is not None else {},
        "train_examples": len(task.train_source), "steps": int(result["step"]), "epochs": args.epochs,
        "trainable_params": int(trainable), "base_params": int(base_total), "added_params": int(added),
        "trainable_pct": 100.0 * trainable / base_total,
        "test_accuracy": float(result["eval"]["test"]["accuracy"]),
        "test_macro_f1": float(result["eval"]["test"]["macro_f1"]),
        "step_time_ms": 1000 * statistics.median(times) if times else None,
        "peak_step_memory_mib": None if peak is None else peak / 2 ** 20,
        "opt_state_mib": opt_bytes / 2 ** 20,
        "checkpoint_bytes": int(ckpt_bytes),
        "train_wall_s": train_s, "load_before": load_before, "load_after": common.load_average(),
    }
    if forgetting is not None:
        row["forgetting"] = forgetting
    del trainer, state, st
    shutil.rmtree(workdir, ignore_errors=True)
    common.say(f"[{dataset}] {variant}: acc {row['test_accuracy']:.4f}, trainable {row['trainable_pct']:.2f}%, "
               f"step {row['step_time_ms']:.0f} ms, {train_s:.0f} s")
    return row


def fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def to_markdown(result: dict) -> str:
    """The tables of ``docs/peft_table.md`` from a ``peft_table.json`` result."""
    s = result["settings"]
    m = result["machine"]
    lines = ["# PEFT methods vs full fine-tuning (all-MiniLM-L6-v2)", "",
             f"Generated by `benchmarks/peft_table.py` from `benchmarks/results/peft_table.json` "
             f"({result['finished']}). Settings: {s['train_limit'] or 'all'} training rows, {s['epochs']} epoch(s), "
             f"batch {s['batch_size']}, seed {s['seed']}; machine: {m['cpu_model']}, {m['usable_cores']} cores, "
             f"backend {m['threads'].get('jax_backend')}, load average at start {m['load_average']}.", "",
             "Columns: trainable parameters (count, % of the 22.7M-parameter base classifier; HFT: the half "
             "trained in the first stage), median train-step time on one fixed batch, peak memory of the compiled "
             "train step (XLA memory analysis: arguments + outputs + temporaries) and the optimizer state, "
             "test accuracy (Δ = points vs full fine-tuning of the same run), adapter checkpoint size "
             "(full fine-tuning: the exported `model.safetensors`). Learning rates: each method's default "
             "(`jaxbert/peft/__init__.py`).", ""]
    for ds in s["datasets"]:
        rows = [r for r in result["rows"] if r["dataset"] == ds]
        if not rows:
            continue
        full = next((r for r in rows if r["variant"] == "full"), None)
        lines += [f"## {ds}", "", "| method | trainable | % | step (ms) | step peak mem (MiB) | opt state (MiB) "
                  "| test acc | Δ vs full | checkpoint | lr |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            delta = "" if full is None or r is full else f"{100 * (r['test_accuracy'] - full['test_accuracy']):+.2f}"
            mem = "" if r["peak_step_memory_mib"] is None else f"{r['peak_step_memory_mib']:.0f}"
            lines.append(f"| {r['variant']} | {fmt_count(r['trainable_params'])} | {r['trainable_pct']:.2f} | "
                         f"{r['step_time_ms']:.0f} | {mem} | {r['opt_state_mib']:.1f} | "
                         f"{100 * r['test_accuracy']:.2f} | {delta} | {fmt_bytes(r['checkpoint_bytes'])} | "
                         f"{r['learning_rate']:g} |")
        lines.append("")
    forget = [r for r in result["rows"] if "forgetting" in r]
    if forget:
        f0 = forget[0]["forgetting"]["before"]
        lines += ["## Forgetting", "",
                  f"Zero-shot general ability of the encoder (mean pooling) before and after task fine-tuning: "
                  f"wordnet_defs retrieval nDCG@10 (1,000 test queries, corpus_20k"
                  f"{'' if not s.get('forgetting_corpus_limit') else ' limited to the relevant documents + ' + str(s['forgetting_corpus_limit']) + ' others'}) "
                  f"and lee document-similarity Spearman. Pretrained MiniLM: nDCG@10 {f0['wordnet_ndcg@10']:.4f}, "
                  f"Spearman {f0['lee_spearman']:.4f}.", "",
                  "| dataset | method | nDCG@10 after | Δ nDCG@10 | Spearman after | Δ Spearman |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in forget:
            a, d = r["forgetting"]["after"], r["forgetting"]["delta"]
            lines.append(f"| {r['dataset']} | {r['variant']} | {a['wordnet_ndcg@10']:.4f} | {d['wordnet_ndcg@10']:+.4f} "
                         f"| {a['lee_spearman']:.4f} | {d['lee_spearman']:+.4f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="rotten_tomatoes,trec")
    p.add_argument("--methods", default="all")
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--time-steps", type=int, default=5)
    p.add_argument("--forgetting-methods", default=",".join(FORGETTING_DEFAULT))
    p.add_argument("--forgetting-corpus-limit", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--markdown", default=str(DEFAULT_MD))
    p.add_argument("--markdown-only", action="store_true", help="regenerate the markdown from --out and exit")
    args = p.parse_args(argv)

    if args.markdown_only:
        result = json.loads(Path(args.out).read_text())
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(to_markdown(result))
        common.say(f"wrote {args.markdown}")
        return 0

    from jaxbert.data.sources import data_dir
    from experiments.configs.peft import VARIANTS

    variants = list(VARIANTS) if args.methods == "all" else [m for m in args.methods.split(",") if m]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown methods {unknown}; known: {list(VARIANTS)}")
    if "full" not in variants:
        variants.insert(0, "full")  # the baseline is always measured in the same process
    args.forgetting_methods = [m for m in args.forgetting_methods.split(",") if m]
    datasets = [d for d in args.datasets.split(",") if d]
    root = data_dir()
    started = common.now_iso()
    machine = common.machine()

    forgetting_data, before = None, None
    if any(v in args.forgetting_methods for v in variants):
        from jaxbert import assets
        from jaxbert.convert import hf as hf_convert
        from jaxbert.data.tokenization import load_tokenizer
        from jaxbert.peft.forgetting import general_scores, load_data

        forgetting_data = load_data(root, corpus_limit=args.forgetting_corpus_limit or None)
        mdir = assets.fetch("minilm")
        pre = hf_convert.load_pretrained(mdir, task="base")
        common.say(f"forgetting probes on the pretrained encoder ({len(forgetting_data.queries)} queries, "
                   f"{len(forgetting_data.docs)} documents)")
        before = general_scores(pre.params, pre.config, load_tokenizer(mdir), forgetting_data)

    rows = []
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="peft_table_") as tmp:
        for ds in datasets:
            for v in variants:
                rows.append(run_one(v, ds, args, root, Path(tmp), forgetting_data, before))
                payload = {"name": "peft_table", "started": started, "finished": common.now_iso(),
                           "settings": {"datasets": datasets, "variants": variants, "train_limit": args.train_limit,
                                        "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                                        "time_steps": args.time_steps,
                                        "forgetting_methods": args.forgetting_methods,
                                        "forgetting_corpus_limit": args.forgetting_corpus_limit},
                           "machine": machine, "rows": rows}
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp_out = out.with_suffix(".json.tmp")
                tmp_out.write_text(json.dumps(payload, indent=2))
                tmp_out.replace(out)  # partial results survive an interruption
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(to_markdown(payload))
    common.say(f"wrote {out} and {args.markdown}")
    print(json.dumps(payload["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
