r"""Accuracy parity: jaxbert's fine-tuning engine vs a plain PyTorch loop, same data and recipe.

Fine-tunes all-MiniLM-L6-v2 on rotten_tomatoes (``experiments/configs/finetune_classification.py:
rotten_tomatoes``: max_length 64, batch 32, 1 epoch, AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-8,
weight decay 0.01 except biases/LayerNorm, global-norm clip 1.0, linear warmup over 6% of the
steps then linear decay to 0, dropout 0.1) twice:

* **jaxbert**: the engine itself, ``jaxbert.train.loop.Trainer(config, workdir).run()`` (its own
  grain iterator, jitted step, evaluation). TensorBoard, the progress bar and the HF export are
  switched off; they do not touch training.
* **torch**: ``transformers.BertForSequenceClassification.from_pretrained(minilm, num_labels=2)``
  trained by a plain loop: ``torch.optim.AdamW`` with two parameter groups (decayed /
  not decayed), ``get_linear_schedule_with_warmup``, ``clip_grad_norm_``, ``model.train()``.

What is made identical, and checked (``checks`` in the JSON):

* **data order**: the exact batches (token ids, masks, labels) that the engine's train iterator
  yields, ``task.train_iterator(batch_size, seed)``, are recorded before training and fed to
  the torch loop in the same order; the engine's own iterator is wrapped during ``run()`` and
  every batch it consumed is compared (sha1) with the recorded one;
* **schedule**: torch's ``LambdaLR`` multipliers times the LR equal jaxbert's ``make_schedule``
  at every step (max abs difference reported);
* **weight decay groups**: jaxbert's decay mask (``make_optimizer`` info), converted to HF names
  through the checkpoint converter, decides the torch groups; every torch parameter must be
  covered;
* **dropout**: the torch config gets the jaxbert model config's dropout rates;
* **evaluation**: both models are scored on the engine's own eval batches (pad rows have weight 0)
  with the same metric code (``jaxbert.eval.metrics.accuracy_and_f1``).

The classifier head is freshly initialised on each side (different RNGs), and dropout masks differ,
so the runs are not bit-identical: the criterion is test accuracy within ``--tolerance`` (1.0)
points.

Usage::

    python benchmarks/finetune_parity.py                              # full run (~318 steps per side)
    python benchmarks/finetune_parity.py --train-limit 640 --eval-limit 256   # quick check

Flags: ``--epochs``, ``--max-steps`` (caps the schedule's total steps), ``--train-limit`` /
``--eval-limit`` (seeded random subsets, written to a temporary directory), ``--seed``,
``--threads`` (torch threads; XLA uses every usable core), ``--frameworks``, ``--name``.
Output: JSON on stdout and in ``benchmarks/results/finetune_parity.json``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.ensure_repo_on_path()


def _digest(batch: dict) -> str:
    h = hashlib.sha1()
    for k in sorted(batch):
        v = batch[k]
        h.update(k.encode())
        h.update(str(v.dtype).encode() + str(v.shape).encode())
        h.update(v.tobytes())
    return h.hexdigest()


class _RecordingIterator:
    """Wraps the engine's data iterator; remembers a digest of every batch handed out."""

    def __init__(self, it):
        self._it = it
        self.digests: list[str] = []

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self.digests.append(_digest(batch))
        return batch

    def __getattr__(self, name):  # get_state / set_state / spec ...
        return getattr(self._it, name)


def _subset_jsonl(src: str, dst: Path, limit: int, seed: int) -> tuple[str, int]:
    """A seeded random subset of ``limit`` lines of ``src`` (file order kept), written to ``dst``."""
    import numpy as np
    lines = [ln for ln in Path(src).read_text().splitlines() if ln.strip()]
    if limit >= len(lines):
        return src, len(lines)
    keep = np.sort(np.random.default_rng(seed).choice(len(lines), size=limit, replace=False))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines[i] for i in keep) + "\n")
    return str(dst), limit


def _count_lines(path: str) -> int:
    return sum(1 for ln in Path(path).read_text().splitlines() if ln.strip())


def build_config(args, tmp: Path):
    from experiments.configs.finetune_classification import get_config
    cfg = get_config(args.config)
    cfg.seed = args.seed
    if args.epochs is not None:
        cfg.num_epochs = args.epochs
    if args.max_steps is not None:
        cfg.num_train_steps = args.max_steps
    cfg.tensorboard = False
    cfg.progress = False
    cfg.export_hf = False
    sizes = {}
    if args.train_limit:
        cfg.data.train, sizes["train"] = _subset_jsonl(cfg.data.train, tmp / "data" / "train.jsonl",
                                                       args.train_limit, args.seed + 1)
    else:
        sizes["train"] = _count_lines(cfg.data.train)
    for split in cfg.eval_splits:
        path = cfg.data[split]
        if args.eval_limit:
            cfg.data[split], sizes[split] = _subset_jsonl(path, tmp / "data" / f"{split}.jsonl",
                                                          args.eval_limit, args.seed + 2)
        else:
            sizes[split] = _count_lines(path)
    return cfg, sizes


# ------------------------------------------------------------------------------------ jaxbert


def run_jaxbert(trainer, workdir: Path, recorded_digests: list[str]) -> dict:
    import jax

    recorder = {}
    make_iter = trainer.task.train_iterator

    def recording_iterator(batch_size, seed):
        recorder["it"] = _RecordingIterator(make_iter(batch_size, seed))
        return recorder["it"]

    trainer.task.train_iterator = recording_iterator
    step_fn = trainer.train_step
    calls: list[tuple[float, float]] = []

    def timed_step(state, batch):
        t0 = time.perf_counter()
        out = jax.block_until_ready(step_fn(state, batch))
        calls.append((t0, time.perf_counter()))
        return out

    trainer.train_step = timed_step
    common.say(f"jaxbert: training {trainer.total_steps} steps ...")
    t0 = time.perf_counter()
    result = trainer.run()
    total_s = time.perf_counter() - t0
    trainer.task.train_iterator = make_iter
    trainer.train_step = step_fn
    if result.get("status") != "done":
        raise RuntimeError(f"jaxbert run did not finish: {result}")

    consumed = recorder["it"].digests
    same = consumed == recorded_digests[:len(consumed)] and len(consumed) == len(recorded_digests)
    first_mismatch = next((i for i, (a, b) in enumerate(zip(consumed, recorded_digests)) if a != b), None)
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train_rows = [r for r in rows if r.get("split") == "train"]
    step_times = [b - a for a, b in calls]
    train_loop_s = calls[-1][1] - calls[0][0]
    out = {
        "eval": result["eval"],
        "wall_s_total": round(total_s, 2),
        "train_loop_s": round(train_loop_s, 2),
        "first_step_s_incl_compile": round(step_times[0], 2),
        "step_compute_s": round(sum(step_times), 2),
        "steps_per_s_after_first": round((len(step_times) - 1) / max(sum(step_times[1:]), 1e-9), 3)
        if len(step_times) > 1 else None,
        "eval_and_checkpoint_s": round(total_s - train_loop_s, 2),
        "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
        "loss_curve": [{"step": r["step"], "loss": round(r["loss"], 4), "accuracy": round(r["accuracy"], 4),
                        "learning_rate": r["learning_rate"]} for r in train_rows],
    }
    check = {"batches_consumed": len(consumed), "identical_to_recorded": same, "first_mismatch": first_mismatch}
    return out, check


# ------------------------------------------------------------------------------------ torch


def torch_decay_groups(trainer, model) -> tuple[list, list, dict]:
    """Split torch parameters by jaxbert's own decay mask, mapped to HF names by the converter."""
    import jax
    import numpy as np
    from jaxbert.convert import hf as hf_convert

    mask, params = trainer.optim_info["decay_mask"], trainer.task.pretrained_params
    marked = jax.tree.map(lambda d, p: np.full(np.shape(p), 1.0 if d else 0.0, np.float32), mask, params)
    hf = hf_convert.params_to_hf(marked, trainer.task.model_config, task="sequence_classification")
    decay, no_decay, missing = [], [], []
    for name, p in model.named_parameters():
        if name not in hf:
            missing.append(name)
            continue
        v = hf[name]
        if v.min() != v.max():
            raise RuntimeError(f"decay mask is not uniform over {name}")
        (decay if v.max() == 1.0 else no_decay).append((name, p))
    if missing:
        raise RuntimeError(f"torch parameters with no jaxbert counterpart: {missing}")
    unused = sorted(set(hf) - {n for n, _ in model.named_parameters()})
    info = {"decayed_tensors": len(decay), "not_decayed_tensors": len(no_decay),
            "not_decayed_examples": [n for n, _ in no_decay[:4]],
            "jaxbert_params_without_torch_counterpart": unused}
    return decay, no_decay, info


def run_torch(trainer, batches: list[dict], threads: int) -> tuple[dict, dict]:
    import numpy as np
    import torch
    import transformers
    from jaxbert.eval.metrics import accuracy_and_f1

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    cfg = trainer.config
    ocfg = trainer.optim_info["config"]
    mc = trainer.task.model_config
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t_all = time.perf_counter()
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(trainer.task.model_dir), num_labels=trainer.task.label_map.num_classes,
        hidden_dropout_prob=mc.hidden_dropout_prob, attention_probs_dropout_prob=mc.attention_probs_dropout_prob,
        classifier_dropout=mc.classifier_dropout)
    decay, no_decay, group_info = torch_decay_groups(trainer, model)
    opt = torch.optim.AdamW([{"params": [p for _, p in decay], "weight_decay": float(ocfg.weight_decay)},
                             {"params": [p for _, p in no_decay], "weight_decay": 0.0}],
                            lr=float(ocfg.learning_rate), betas=(float(ocfg.b1), float(ocfg.b2)), eps=float(ocfg.eps))
    from jaxbert.train import optim as optim_lib
    warm = optim_lib.warmup_steps(ocfg)
    total = int(ocfg.total_steps)
    if ocfg.schedule != "linear" or ocfg.end_lr_factor:
        raise NotImplementedError(f"the torch reference mirrors the linear schedule to 0 only, got {ocfg.schedule}")
    sched = transformers.get_linear_schedule_with_warmup(opt, warm, total)
    lr = float(ocfg.learning_rate)
    sched_diff = max(abs(lr * sched.lr_lambdas[0](i) - float(trainer.schedule(i))) for i in range(total))
    clip = ocfg.grad_clip_norm
    checks = {"schedule": {"warmup_steps": warm, "total_steps": total, "max_abs_lr_diff": sched_diff,
                           "identical": sched_diff <= 1e-6 * lr},
              "weight_decay_groups": group_info,
              "num_params": {"torch": sum(p.numel() for p in model.parameters()),
                             "jaxbert": trainer.optim_info["num_trainable"]},
              "dropout": {"hidden": model.config.hidden_dropout_prob,
                          "attention": model.config.attention_probs_dropout_prob,
                          "classifier": model.config.classifier_dropout,
                          "jaxbert": [mc.hidden_dropout_prob, mc.attention_probs_dropout_prob, mc.classifier_dropout]},
              "attn_implementation": getattr(model.config, "_attn_implementation", None)}

    common.say(f"torch: training {len(batches)} steps ({threads} threads) ...")
    model.train()
    losses, accs, curve, step_times = [], [], [], []
    t_train = time.perf_counter()
    for step, b in enumerate(batches, start=1):
        t0 = time.perf_counter()
        tb = {k: torch.from_numpy(np.asarray(v)).long() for k, v in b.items()}
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"],
                    token_type_ids=tb["token_type_ids"], labels=tb["labels"])
        out.loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
        lr_used = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        accs.append((out.logits.argmax(-1) == tb["labels"]).float().mean().item())
        step_times.append(time.perf_counter() - t0)
        if step % cfg.log_every == 0 or step == len(batches):
            curve.append({"step": step, "loss": round(float(np.mean(losses)), 4),
                          "accuracy": round(float(np.mean(accs)), 4), "learning_rate": lr_used})
            losses, accs = [], []
            common.say(f"torch: step {step}/{len(batches)} loss {curve[-1]['loss']:.4f}")
    train_s = time.perf_counter() - t_train

    model.eval()
    t_eval = time.perf_counter()
    evals = {}
    with torch.no_grad():
        for split in trainer.task.eval_sources:
            preds, labels, weights, loss_sum = [], [], [], 0.0
            for b in trainer.task.eval_batches(split, cfg.eval_batch_size):
                logits = model(input_ids=torch.from_numpy(b["input_ids"]).long(),
                               attention_mask=torch.from_numpy(b["attention_mask"]).long(),
                               token_type_ids=torch.from_numpy(b["token_type_ids"]).long()).logits
                w = torch.from_numpy(b["weights"])
                lab = torch.from_numpy(b["labels"]).long()
                loss_sum += float((torch.nn.functional.cross_entropy(logits, lab, reduction="none") * w).sum())
                preds.append(logits.argmax(-1).numpy())
                labels.append(b["labels"])
                weights.append(b["weights"])
            preds, labels, weights = map(np.concatenate, (preds, labels, weights))
            keep = weights > 0
            m = accuracy_and_f1(preds[keep], labels[keep], num_classes=trainer.task.label_map.num_classes)
            m["loss"] = loss_sum / max(float(weights.sum()), 1.0)
            m["num_examples"] = int(keep.sum())
            evals[split] = m
    eval_s = time.perf_counter() - t_eval
    out = {"eval": evals, "wall_s_total": round(time.perf_counter() - t_all, 2), "train_loop_s": round(train_s, 2),
           "first_step_s": round(step_times[0], 2), "step_compute_s": round(sum(step_times), 2),
           "steps_per_s_after_first": round((len(step_times) - 1) / max(sum(step_times[1:]), 1e-9), 3)
           if len(step_times) > 1 else None,
           "eval_s": round(eval_s, 2), "final_train_loss": curve[-1]["loss"] if curve else None,
           "loss_curve": curve, "torch_num_threads": torch.get_num_threads()}
    return out, checks


# ------------------------------------------------------------------------------------ main


def _majority(trainer, split: str) -> float:
    """Accuracy of always predicting the most frequent class of ``split`` (context for the numbers)."""
    from collections import Counter
    src, lm = trainer.task.eval_sources[split], trainer.task.label_map
    counts = Counter(lm.encode(src[i][lm.field]) for i in range(len(src)))
    return round(max(counts.values()) / max(sum(counts.values()), 1), 4)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="rotten_tomatoes", help="finetune_classification.py config argument")
    p.add_argument("--epochs", type=float, default=None, help="override num_epochs (config: 1)")
    p.add_argument("--max-steps", type=int, default=None, help="override num_train_steps (total steps)")
    p.add_argument("--train-limit", type=int, default=None, help="train on a seeded random subset of N examples")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on seeded random subsets of N examples")
    p.add_argument("--seed", type=int, default=0, help="config seed (data order, jaxbert init/dropout, torch seed)")
    p.add_argument("--threads", type=int, default=common.usable_cores(),
                   help="torch.set_num_threads (default: usable cores; XLA:CPU uses all usable cores)")
    p.add_argument("--tolerance", type=float, default=1.0, help="max |test accuracy difference| in points")
    p.add_argument("--frameworks", default="jaxbert,torch")
    p.add_argument("--workdir", default=None, help="jaxbert workdir (must not exist; default: a temp dir, removed)")
    p.add_argument("--name", default="finetune_parity", help="result file benchmarks/results/<name>.json")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    frameworks = [f for f in args.frameworks.split(",") if f]
    if set(frameworks) - {"jaxbert", "torch"}:
        raise SystemExit(f"--frameworks takes jaxbert,torch; got {args.frameworks}")

    machine = common.machine()
    common.say(f"load average at start: {machine['load_average']} on {machine['usable_cores']} cores")
    tmp = Path(tempfile.mkdtemp(prefix="jaxbert_parity_"))
    workdir = Path(args.workdir) if args.workdir else tmp / "workdir"
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"--workdir {workdir} is not empty (the engine would resume from it)")
    try:
        import jax  # noqa: F401  (after argument parsing: --help stays fast)
        from jaxbert.train.loop import Trainer

        cfg, sizes = build_config(args, tmp)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, workdir)
        setup_s = time.perf_counter() - t0
        common.say(f"{trainer.total_steps} steps of {cfg.batch_size}; examples {sizes}; setup {setup_s:.1f}s")
        it = trainer.task.train_iterator(cfg.batch_size, cfg.seed)
        batches = [next(it) for _ in range(trainer.total_steps)]
        recorded = [_digest(b) for b in batches]
        del it
        ocfg = trainer.optim_info["config"]
        mc = trainer.task.model_config
        settings = {
            "config": args.config, "model": cfg.model.init_from, "seed": cfg.seed,
            "examples": sizes, "limits": {"train": args.train_limit, "eval": args.eval_limit},
            "batch_size": cfg.batch_size, "max_length": cfg.data.max_length, "num_epochs": cfg.num_epochs,
            "total_steps": trainer.total_steps, "eval_batch_size": cfg.eval_batch_size,
            "optimizer": {"name": ocfg.name, "learning_rate": ocfg.learning_rate, "b1": ocfg.b1, "b2": ocfg.b2,
                          "eps": ocfg.eps, "weight_decay": ocfg.weight_decay, "grad_clip_norm": ocfg.grad_clip_norm,
                          "schedule": ocfg.schedule, "warmup_ratio": ocfg.warmup_ratio,
                          "end_lr_factor": ocfg.end_lr_factor},
            "dropout": {"hidden": mc.hidden_dropout_prob, "attention": mc.attention_probs_dropout_prob,
                        "classifier": mc.classifier_dropout},
            "torch_threads": args.threads, "xla_cpu_threads": "all usable cores",
            "train_label_balance": float(sum(b["labels"].sum() for b in batches)
                                         / sum(b["labels"].size for b in batches)),
        }
        checks = {"data_order": {"recorded_batches": len(recorded),
                                 "sha1_all": hashlib.sha1("".join(recorded).encode()).hexdigest()}}
        results = {}
        loads = {"start": machine["load_average"]}
        if "jaxbert" in frameworks:
            results["jaxbert"], order_check = run_jaxbert(trainer, workdir, recorded)
            checks["data_order"]["jaxbert_engine"] = order_check
            loads["after_jaxbert"] = common.load_average()
            gc.collect()
        if "torch" in frameworks:
            results["torch"], torch_checks = run_torch(trainer, batches, args.threads)
            checks["data_order"]["torch"] = "fed the recorded batches in order"
            checks.update(torch_checks)
            loads["after_torch"] = common.load_average()

        comparison = None
        if len(results) == 2:
            comparison = {}
            for split in trainer.task.eval_sources:
                a, b = results["jaxbert"]["eval"][split]["accuracy"], results["torch"]["eval"][split]["accuracy"]
                comparison[split] = {"jaxbert_accuracy": a, "torch_accuracy": b,
                                     "difference_points": round(100 * (a - b), 3),
                                     "majority_class_accuracy": _majority(trainer, split)}
            if "test" in comparison:
                diff = comparison["test"]["difference_points"]
                full = not (args.train_limit or args.eval_limit or args.max_steps or args.epochs)
                comparison["criterion"] = {
                    "rule": f"|test accuracy difference| <= {args.tolerance} points",
                    "passed": abs(diff) <= args.tolerance,
                    "applies": full,
                    "note": None if full else "limited run (subset/steps overridden): a smoke check, not the criterion",
                }
            for k in ("wall_s_total", "train_loop_s", "step_compute_s", "steps_per_s_after_first"):
                comparison[k] = {"jaxbert": results["jaxbert"][k], "torch": results["torch"][k]}
        payload = {
            "benchmark": "finetune_parity",
            "created": common.now_iso(),
            "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
            "settings": settings,
            "comparison": comparison,
            "results": results,
            "checks": checks,
            "timing_notes": ("jaxbert train_loop_s includes its grain input pipeline (tokenising in background "
                             "threads on the same cores), first-step compilation and per-step logging; "
                             "wall_s_total adds evaluation of every split and the final checkpoint. torch "
                             "train_loop_s runs on pre-tokenised recorded batches; wall_s_total adds model "
                             "loading and evaluation. step_compute_s sums the step calls only."),
            "load_average": loads,
            "machine": {**machine, "threads": common.thread_settings()},
        }
        common.write_result(args.name, payload, args.out_dir)
        if comparison and "criterion" in comparison:
            c = comparison["criterion"]
            common.say(f"test accuracy jaxbert {comparison['test']['jaxbert_accuracy']:.4f} vs torch "
                       f"{comparison['test']['torch_accuracy']:.4f}: {comparison['test']['difference_points']:+.2f} "
                       f"points -> {'PASS' if c['passed'] else 'FAIL'}{'' if c['applies'] else ' (limited run)'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
