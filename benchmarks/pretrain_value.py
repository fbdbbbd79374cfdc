r"""Does pretraining from scratch pay off downstream? MLM on Brown, then fine-tuning on trec.

The claim (Turc et al. 2019, "Well-Read Students Learn Better"): even a compact BERT pretrained
with MLM beats the same architecture trained from random initialisation on a downstream task
with the same fine-tuning budget. Measured here end to end on CPU, all with jaxbert's engine:

1. **Tokenizer**: WordPiece trained on the 400 Brown *train* documents
   (``jaxbert.data.tokenization.train_tokenizer``; vocab 8192, a multiple of 64).
2. **Pretraining**, once per masking strategy (default: ``random`` = BERT, ``span`` =
   SpanBERT): ``experiments/configs/pretrain_mlm.py:<size>,<masking>`` (packed 128-token rows,
   AdamW, warmup + linear decay) for ``--steps`` steps. Held-out MLM loss / accuracy on the
   Brown validation and test documents every ``--eval-every`` steps, always with the *same*
   masker (random tokens, 15%, fixed seed), so curves compare across strategies.
3. **Random init**: the same architecture, same tokenizer, initialised and exported without
   training.
4. **Fine-tuning** each export on trec coarse labels
   (``finetune_classification.py:trec``: 3 epochs, batch 32, max_length 48, AdamW, 6% warmup,
   linear decay, dropout 0.1 whatever the pretraining used) on a seeded 90% of trec train, for
   each LR in ``--ft-lrs`` and seed in ``--ft-seeds``. Each initialisation gets the LR with the
   best accuracy on the other 10% (dev); its test accuracy and macro-F1 on the 538 held-out
   questions are reported. Same steps, same schedule, same head-init seeds for every
   initialisation. ``--ft-at`` also fine-tunes intermediate pretraining checkpoints (downstream
   value as a function of pretraining steps).

Output: ``benchmarks/results/pretrain_value.json`` (machine + load averages, tokenizer, every
pretraining curve, fine-tuning runs and the mean per initialisation, wall times) and a
Markdown table on stderr (pasted into docs/pretraining.md).

Usage::

    python benchmarks/pretrain_value.py --flags prenorm --steps 1800 --eval-every 300 \
        --ft-seeds 0,1,2                                 # run 2 of docs/pretraining.md (pre-norm tiny)
    python benchmarks/pretrain_value.py                 # run 1 (post-norm bert-tiny, 1,400 steps)
    python benchmarks/pretrain_value.py --steps 60 --eval-every 30 --ft-epochs 0.3 --ft-lrs 1e-3 \
        --workdir /tmp/pv --out /tmp/pv                  # a few-minute check of the pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Timer, load_average, machine, now_iso, say, write_result  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny", help="pretrain_mlm.py size (tiny, mini, small, base)")
    p.add_argument("--flags", default="", help="extra pretrain_mlm.py flags, comma-separated (e.g. prenorm)")
    p.add_argument("--maskings", default="random,span", help="comma-separated pretrain_mlm.py maskings")
    p.add_argument("--steps", type=int, default=1400, help="pretraining steps per masking strategy")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--rate", type=float, default=0.15, help="training masking rate")
    p.add_argument("--lr", type=float, default=None, help="pretraining peak learning rate (default: the config's)")
    p.add_argument("--dropout", type=float, default=None,
                   help="pretraining dropout (default: the config's; fine-tuning always uses 0.1)")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--ft-lrs", default="3e-4,1e-3", help="fine-tuning LR grid; each init gets the LR with "
                   "the best dev accuracy (dev = 10%% of trec train, seeded)")
    p.add_argument("--ft-epochs", type=float, default=3.0)
    p.add_argument("--ft-seeds", default="0")
    p.add_argument("--ft-at", default="", help="also fine-tune these intermediate pretraining steps "
                   "(multiples of --eval-every), e.g. 400,800")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/pretrain_value", help="runs, exports and the tokenizer")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    return p.parse_args(argv)


def quiet(c):
    c.progress = False
    c.tensorboard = False
    return c


def config_arg(args, masking: str) -> str:
    """The ``pretrain_mlm.py`` argument: ``<size>,<masking>[,flags]``."""
    return ",".join([args.size, masking] + [f for f in args.flags.split(",") if f])


def pretrain_config(args, masking: str, tokenizer: str):
    from experiments.configs.pretrain_mlm import get_config
    c = quiet(get_config(config_arg(args, masking)))
    c.seed = args.seed
    c.data.tokenizer = tokenizer
    c.data.max_length = args.max_length
    c.batch_size = args.batch_size
    c.num_train_steps = args.steps
    c.eval_every = args.eval_every
    c.log_every = min(50, args.eval_every)
    c.mlm.rate = args.rate
    if args.lr is not None:
        c.optim.learning_rate = args.lr
    if args.dropout is not None:
        c.model.overrides.hidden_dropout_prob = args.dropout
        c.model.overrides.attention_probs_dropout_prob = args.dropout
    c.eval_splits = ("validation", "test")
    c.mlm.eval_masking = "random"  # one held-out yardstick for every strategy
    c.mlm.eval_rate = 0.15
    c.checkpoint.keep_last = 1
    return c


def trec_dev_split(work: Path, seed: int = 0) -> tuple[str, str]:
    """90/10 split of trec train (seeded shuffle) for LR selection; test stays untouched."""
    import random
    from jaxbert.data.sources import data_dir
    lines = [l for l in (data_dir() / "trec" / "train.jsonl").read_text().splitlines() if l.strip()]
    random.Random(seed).shuffle(lines)
    n_dev = len(lines) // 10
    out = work / "trec_split"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dev.jsonl").write_text("\n".join(lines[:n_dev]) + "\n")
    (out / "train.jsonl").write_text("\n".join(lines[n_dev:]) + "\n")
    return str(out / "train.jsonl"), str(out / "dev.jsonl")


def finetune_config(args, init_dir: str, seed: int, lr: float, split: tuple[str, str]):
    from experiments.configs.finetune_classification import get_config
    c = quiet(get_config("trec"))
    c.model.init_from = init_dir
    c.seed = seed
    c.data.train, c.data.validation = split
    c.eval_splits = ("validation", "test")
    c.checkpoint.best_metric = "validation/accuracy"
    c.optim.learning_rate = lr
    c.model.overrides.hidden_dropout_prob = 0.1  # the same fine-tuning recipe whatever the pretraining used
    c.model.overrides.attention_probs_dropout_prob = 0.1
    c.num_epochs = args.ft_epochs
    c.export_hf = False
    c.checkpoint.keep_last = 1
    return c


def export_checkpoint(trainer, workdir: Path, step: int) -> Path:
    """Export the pretraining checkpoint of ``step`` (saved at an evaluation) as an HF directory."""
    from jaxbert.train.checkpoint import Checkpointer
    with Checkpointer(workdir) as ckpt:
        if step not in ckpt.all_steps():
            raise ValueError(f"no checkpoint at step {step} in {workdir} (have {ckpt.all_steps()}); "
                             "--ft-at steps must be multiples of --eval-every")
        state, _ = ckpt.restore(step)
    params = state["params"] if isinstance(state, dict) else state.params
    return trainer.task.export(params, workdir / f"export_step{step}")


def read_curve(workdir: Path) -> list[dict]:
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    keep = ("loss", "accuracy", "perplexity")
    curve: dict[int, dict] = {}
    for r in rows:
        if r["split"] in ("validation", "test"):
            curve.setdefault(r["step"], {"step": r["step"]}).update({f"{r['split']}_{k}": r[k] for k in keep})
        elif r["split"] == "train":
            curve.setdefault(r["step"], {"step": r["step"]})["train_loss"] = r["loss"]
    return [curve[s] for s in sorted(curve)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import numpy as np
    import flax.linen as nn
    from jaxbert.data.tokenization import load_tokenizer, train_tokenizer
    from jaxbert.tasks import get_task
    from jaxbert.train.loop import Trainer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result = {"name": "pretrain_value", "started": now_iso(), "machine": machine(), "args": vars(args),
              "phases": {}}
    t_all = time.perf_counter()

    def phase(name, seconds, load_before):
        result["phases"][name] = {"seconds": round(seconds, 1), "load_before": load_before,
                                  "load_after": load_average()}

    # ------------------------------------------------------------ 1. tokenizer
    from experiments.configs.pretrain_mlm import get_config
    base = pretrain_config(args, "random", tokenizer=None)
    from jaxbert.tasks.mlm import load_documents
    docs = load_documents(base)
    lb = load_average()
    with Timer() as t:
        tok_dir = train_tokenizer(docs["train"], work / "tokenizer", model="wordpiece", vocab_size=args.vocab_size)
    tok = load_tokenizer(tok_dir)
    phase("tokenizer", t.seconds, lb)
    result["tokenizer"] = {"model": "wordpiece", "vocab": len(tok), "train_documents": len(docs["train"]),
                           "seconds": round(t.seconds, 1), "dir": str(tok_dir)}
    say(f"tokenizer: {len(tok)} pieces in {t.seconds:.1f}s")

    # ------------------------------------------------------------ 2. random-init export
    lb = load_average()
    with Timer() as t:
        task = get_task("mlm")(pretrain_config(args, "random", str(tok_dir)))
        params = nn.unbox(jax.jit(lambda r: task.model.init(r, **task.sample_input))(
            jax.random.split(jax.random.key(args.seed))[0])["params"])
        random_export = task.export(params, work / "random_init" / "export")
    phase("random_init", t.seconds, lb)
    result["rows"] = task.stats
    inits = {"random init": str(random_export)}

    # ------------------------------------------------------------ 3. pretraining
    result["pretraining"] = {}
    ft_at = [int(x) for x in args.ft_at.split(",") if x]
    for masking in [m for m in args.maskings.split(",") if m]:
        wd = work / f"pretrain_{args.size}_{masking}"
        if (wd / "checkpoints").exists():
            import shutil
            shutil.rmtree(wd)
        lb = load_average()
        say(f"pretraining {args.size} with {masking} masking for {args.steps} steps (load {lb})")
        cfg = pretrain_config(args, masking, str(tok_dir))
        cfg.checkpoint.keep_last = 1 + len(ft_at)
        with Timer() as t:
            trainer = Trainer(cfg, wd)
            out = trainer.run()
        phase(f"pretrain_{masking}", t.seconds, lb)
        for step in ft_at:
            inits[f"MLM {masking} @{step}"] = str(export_checkpoint(trainer, wd, step))
        curve = read_curve(wd)
        result["pretraining"][masking] = {"seconds": round(t.seconds, 1), "steps": out["step"],
                                          "final": out["eval"], "curve": curve,
                                          "command": f"python -m experiments.launch --config experiments/configs/"
                                                     f"pretrain_mlm.py:{config_arg(args, masking)} --workdir {wd} "
                                                     f"--config.data.tokenizer={tok_dir} "
                                                     f"--config.num_train_steps={args.steps}"}
        inits[f"MLM {masking} @{out['step']}"] = out["export_dir"]
        say(f"  done in {t.seconds:.0f}s: validation {out['eval']['validation']}")

    # ------------------------------------------------------------ 4. fine-tuning on trec
    seeds = [int(x) for x in args.ft_seeds.split(",") if x != ""]
    lrs = [float(x) for x in args.ft_lrs.split(",") if x]
    split = trec_dev_split(work)
    result["finetune"] = {}
    for name, init_dir in inits.items():
        runs = []
        for lr in lrs:
            for seed in seeds:
                wd = work / f"trec_{name.replace(' ', '_').replace('@', '')}_lr{lr:g}_seed{seed}"
                if wd.exists():
                    import shutil
                    shutil.rmtree(wd)
                lb = load_average()
                with Timer() as t:
                    out = Trainer(finetune_config(args, init_dir, seed, lr, split), wd).run()
                phase(f"finetune {name} lr{lr:g} seed{seed}", t.seconds, lb)
                dev, test = out["eval"]["validation"], out["eval"]["test"]
                runs.append({"lr": lr, "seed": seed, "dev_accuracy": dev["accuracy"], "accuracy": test["accuracy"],
                             "macro_f1": test["macro_f1"], "steps": out["step"], "seconds": round(t.seconds, 1)})
                say(f"trec from {name} lr {lr:g} seed {seed}: dev {dev['accuracy']:.4f} "
                    f"test {test['accuracy']:.4f} in {t.seconds:.0f}s")
        by_lr = {lr: [r for r in runs if r["lr"] == lr] for lr in lrs}
        best_lr = max(lrs, key=lambda lr: np.mean([r["dev_accuracy"] for r in by_lr[lr]]))
        best = by_lr[best_lr]
        acc = np.array([r["accuracy"] for r in best])
        result["finetune"][name] = {"runs": runs, "best_lr": best_lr, "accuracy_mean": float(acc.mean()),
                                    "accuracy_std": float(acc.std()),
                                    "dev_accuracy_mean": float(np.mean([r["dev_accuracy"] for r in best])),
                                    "macro_f1_mean": float(np.mean([r["macro_f1"] for r in best])),
                                    "accuracy_by_lr": {f"{lr:g}": float(np.mean([r["accuracy"] for r in by_lr[lr]]))
                                                       for lr in lrs}}

    result["total_seconds"] = round(time.perf_counter() - t_all, 1)
    result["finished"] = now_iso()
    result["load_after"] = load_average()
    write_result("pretrain_value", result, args.out, quiet=True)
    say("\n" + markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = ["| initialisation | pretraining | held-out MLM loss / acc (Brown val) | trec LR (by dev) | "
             "trec dev acc | trec test acc | test macro-F1 |", "|---|---|---|---|---|---|---|"]
    for name, ft in r["finetune"].items():
        if name.startswith("MLM "):
            masking, step = name[4:].split(" @")
            p = r["pretraining"][masking]
            point = [c for c in p["curve"] if c["step"] == int(step) and "validation_loss" in c]
            v = point[0] if point else {}
            pre = f"{masking}, {step} steps"
            mlm = f"{v.get('validation_loss', float('nan')):.3f} / {v.get('validation_accuracy', float('nan')):.3f}"
        else:
            pre, mlm = "none", "-"
        n = len([x for x in ft["runs"] if x["lr"] == ft["best_lr"]])
        sd = f" ± {100 * ft['accuracy_std']:.1f}" if n > 1 else ""
        lines.append(f"| {name} | {pre} | {mlm} | {ft['best_lr']:g} | {100 * ft['dev_accuracy_mean']:.1f} | "
                     f"{100 * ft['accuracy_mean']:.1f}{sd} ({n} seed{'s' if n > 1 else ''}) | "
                     f"{100 * ft['macro_f1_mean']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
