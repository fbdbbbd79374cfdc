r"""Fine-tuning stability in low-resource settings: seeds x {plain, LLRD, freezing, re-init}.

The claim under test (Mosbach et al. 2021, "On the Stability of Fine-tuning BERT"; Zhang et al.
2021, "Revisiting Few-sample BERT Fine-tuning"): with small training sets, fine-tuning outcomes
vary a lot with the random seed, and layer-wise learning-rate decay, freezing the lower layers or
re-initialising the top layer(s) reduce that variance.

For each dataset a fixed, seeded random subset of ``--train-size`` training examples (500) is
drawn once (``random.Random(0)``, same subset for every seed and method: the variance measured
is over training seeds -- classifier-head init, data order, dropout). For every method and seed
the engine itself (``jaxbert.train.loop.Trainer``) fine-tunes all-MiniLM-L6-v2 from
``experiments/configs/finetune_classification.py:<dataset>`` and reports accuracy on the full
test split. Methods are the engine's options, nothing else changes:

* ``plain``   -- the config as is (AdamW, lr ``--lr``, warmup 6 %, linear decay, wd 0.01);
* ``llrd``    -- ``optim.layerwise_lr_decay = --llrd`` (layer i of L gets ``d**(L-i)`` x lr,
  embeddings ``d**(L+1)``);
* ``freeze``  -- ``optim.freeze_embeddings = True`` and ``optim.freeze_lower_layers = --freeze``;
* ``reinit``  -- ``reinit_top_layers = --reinit`` (top layer(s) and pooler re-initialised).

Reported per (dataset, method): mean, standard deviation (ddof=1), min, max of test accuracy;
the majority-class baseline and the number of *failed* runs (accuracy not above it, Mosbach et
al.'s definition); and Levene's test (scipy, median-centred) of "same variance as plain" (with
at least 3 seeds per cell; with 5 seeds it only detects large differences in spread).

Usage::

    python benchmarks/stability.py                       # full study: 2 datasets x 4 methods x 5 seeds
    python benchmarks/stability.py --seeds 2 --train-size 64 --epochs 1 --datasets trec   # quick check
    python benchmarks/stability.py --write-doc            # also regenerate docs/stability.md

Output: JSON on stdout and in ``benchmarks/results/stability.json`` (``runs`` with every
accuracy and wall time, ``summary`` per dataset/method, ``machine``); ``--write-doc`` writes the
markdown table to ``docs/stability.md``. Compiled steps are cached on disk
(``--compile-cache``), so seeds after the first of each method skip compilation.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.ensure_repo_on_path()

REPO = Path(__file__).resolve().parent.parent
METHODS = ("plain", "llrd", "freeze", "reinit")
BUCKETS = {"trec": (16, 32, 48), "rotten_tomatoes": (32, 48, 64), "sms_spam": (32, 64, 96)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="trec,rotten_tomatoes")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--train-size", type=int, default=500)
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--llrd", type=float, default=0.8)
    p.add_argument("--freeze", type=int, default=3, help="lower encoder layers frozen (plus embeddings)")
    p.add_argument("--reinit", type=int, default=1, help="top encoder layers re-initialised (plus pooler)")
    p.add_argument("--eval-limit", type=int, default=None, help="seeded subset of the test split (quick checks)")
    p.add_argument("--compile-cache", default=str(Path(tempfile.gettempdir()) / "jaxbert_stability_xla_cache"))
    p.add_argument("--name", default="stability")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--write-doc", action="store_true", help="write docs/stability.md from the result")
    return p.parse_args(argv)


def _subset(src: Path, dst: Path, n: int | None) -> int:
    lines = [l for l in src.read_text(encoding="utf-8").splitlines() if l.strip()]
    if n is not None and n < len(lines):
        keep = sorted(random.Random(0).sample(range(len(lines)), n))
        lines = [lines[i] for i in keep]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def make_config(dataset: str, method: str, seed: int, args, train: Path, test: Path):
    from experiments.configs.finetune_classification import get_config

    c = get_config(dataset)
    c.seed = seed
    c.data.train, c.data.validation, c.data.test = str(train), None, str(test)
    c.eval_splits = ("test",)
    c.data.buckets = BUCKETS.get(dataset)
    c.batch_size = args.batch_size
    c.num_epochs = args.epochs
    c.num_train_steps = None
    c.optim.learning_rate = args.lr
    c.log_every = 10**9
    c.eval_every = 0
    c.checkpoint.best_metric = ""
    c.checkpoint.keep_last = 1
    c.export_hf = False
    c.tensorboard = False
    c.progress = False
    if method == "llrd":
        c.optim.layerwise_lr_decay = args.llrd
    elif method == "freeze":
        c.optim.freeze_embeddings = True
        c.optim.freeze_lower_layers = args.freeze
    elif method == "reinit":
        c.reinit_top_layers = args.reinit
    elif method != "plain":
        raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")
    return c


def majority_accuracy(train: Path, test: Path, field: str) -> float:
    from collections import Counter
    rows = lambda p: [json.loads(l)[field] for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]  # noqa: E731
    top = Counter(rows(train)).most_common(1)[0][0]
    t = rows(test)
    return sum(v == top for v in t) / len(t)


def summarise(runs: list[dict], majority: dict[str, float]) -> dict:
    import numpy as np
    from scipy import stats

    out: dict = {}
    for ds in dict.fromkeys(r["dataset"] for r in runs):
        out[ds] = {"majority_baseline": majority[ds], "methods": {}}
        accs = {m: np.array([r["accuracy"] for r in runs if r["dataset"] == ds and r["method"] == m])
                for m in dict.fromkeys(r["method"] for r in runs if r["dataset"] == ds)}
        for m, a in accs.items():
            row = {"n": int(len(a)), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else None,
                   "min": float(a.min()), "max": float(a.max()),
                   "failed_runs": int((a <= majority[ds] + 1e-9).sum())}
            if m != "plain" and "plain" in accs and len(a) >= 3 and len(accs["plain"]) >= 3:
                if np.ptp(a) == 0 and np.ptp(accs["plain"]) == 0:
                    row["levene_p_vs_plain"] = None
                else:
                    row["levene_p_vs_plain"] = float(stats.levene(accs["plain"], a, center="median").pvalue)
            out[ds]["methods"][m] = row
    return out


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [
        "# Fine-tuning stability in low-resource settings",
        "",
        "Generated by `benchmarks/stability.py` (JSON: `benchmarks/results/stability.json`).",
        f"all-MiniLM-L6-v2, {a['train_size']} training examples (one fixed seeded subset), {a['epochs']:g} epochs, "
        f"batch {a['batch_size']}, AdamW lr {a['lr']:g} (warmup 6 %, linear decay), {a['seeds']} seeds per cell; "
        f"test accuracy in %. LLRD d={a['llrd']:g}; freeze = embeddings + lower {a['freeze']} of 6 layers; "
        f"re-init = top {a['reinit']} layer(s) + pooler.",
        "",
        "| dataset | method | mean | std | min | max | failed | Levene p vs plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for ds, d in result["summary"].items():
        for m, r in d["methods"].items():
            std = "-" if r["std"] is None else f"{100 * r['std']:.2f}"
            lev = r.get("levene_p_vs_plain")
            lines.append(f"| {ds} | {m} | {100 * r['mean']:.2f} | {std} | {100 * r['min']:.2f} | "
                         f"{100 * r['max']:.2f} | {r['failed_runs']}/{r['n']} | "
                         f"{'-' if lev is None else f'{lev:.2f}'} |")
        lines.append(f"| {ds} | *majority class* | {100 * d['majority_baseline']:.2f} | | | | | |")
    m = result["machine"]
    lines += ["", f"Machine: {m.get('cpu_model')}, {m.get('usable_cores')} cores; load average at start "
                  f"{m.get('load_average')}; total wall time {result['wall_s_total'] / 60:.1f} min.", ""]
    lines += ["## Reading", "", result.get("reading") or "(fill in after the full run)", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", args.compile_cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    machine = common.machine()
    from experiments.configs.finetune_classification import DATASETS
    from jaxbert.data.sources import data_dir
    from jaxbert.train.loop import Trainer

    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; known: {list(METHODS)}")
    tmp = Path(tempfile.mkdtemp(prefix="jaxbert_stability_"))
    runs, majority, t_start = [], {}, time.perf_counter()
    try:
        for ds in datasets:
            if ds not in DATASETS:
                raise SystemExit(f"unknown dataset {ds!r}; known: {sorted(DATASETS)}")
            train_rel, _, test_rel, label_field = DATASETS[ds][:4]
            train, test = tmp / f"{ds}_train.jsonl", tmp / f"{ds}_test.jsonl"
            n_train = _subset(data_dir() / train_rel, train, args.train_size)
            n_test = _subset(data_dir() / test_rel, test, args.eval_limit)
            majority[ds] = majority_accuracy(train, test, label_field)
            common.say(f"{ds}: {n_train} train / {n_test} test examples, majority baseline {majority[ds]:.4f}")
            for method in methods:
                for seed in range(args.seeds):
                    cfg = make_config(ds, method, seed, args, train, test)
                    workdir = tmp / f"{ds}_{method}_{seed}"
                    load = common.load_average()
                    with common.Timer() as t:
                        trainer = Trainer(cfg, workdir)
                        result = trainer.run()
                    acc = result["eval"]["test"]["accuracy"]
                    runs.append({"dataset": ds, "method": method, "seed": seed, "accuracy": acc,
                                 "macro_f1": result["eval"]["test"]["macro_f1"], "steps": result["step"],
                                 "wall_s": t.seconds, "load_before": load})
                    common.say(f"{ds} {method} seed {seed}: test accuracy {acc:.4f} ({result['step']} steps, "
                               f"{t.seconds:.0f}s, load {load})")
                    del trainer, result
                    shutil.rmtree(workdir, ignore_errors=True)
                    gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarise(runs, majority)
    payload = {"name": args.name, "date": common.now_iso(), "args": vars(args), "summary": summary, "runs": runs,
               "wall_s_total": time.perf_counter() - t_start, "machine": machine,
               "load_average_end": common.load_average()}
    common.write_result(args.name, payload, args.out_dir)
    if args.write_doc:
        doc = REPO / "docs" / "stability.md"
        doc.parent.mkdir(parents=True, exist_ok=True)
        text = markdown(payload)
        if doc.exists() and "## Reading" in doc.read_text():  # keep the hand-written reading
            text = text.split("## Reading")[0] + "## Reading" + doc.read_text().split("## Reading", 1)[1]
        doc.write_text(text)
        common.say(f"wrote {doc}")
    return payload


if __name__ == "__main__":
    main()
