"""MLM training throughput of jaxbert's encoder blocks vs transformers' PyTorch models, on real text.

What is measured: one full MLM train step (forward, backward, AdamW update) per batch, on the
same batches for every model, in non-pad tokens per second, plus model FLOPs utilisation (MFU)
against the matmul peak measured in the same run.

Models (``--models``, comma list):

=========================== ================================================================
``jax:bert-base``           the configurable block with the BERT config, padded execution
``jax:bert-base-unpad``     the same model, unpadded execution (packed stream, host plan)
``jax:mosaicbert-base``     MosaicBERT (ALiBi, GeGLU, fused qkv), unpadded
``jax:modernbert-base``     ModernBERT (pre-norm, RoPE, GeGLU, local/global), unpadded
``torch:bert-base``         ``transformers.BertForMaskedLM`` (sdpa attention), padded
``torch:modernbert-base``   ``transformers.ModernBertForMaskedLM`` (sdpa, ``sparse_prediction``), padded
=========================== ================================================================

All jaxbert models compute the MLM head on the masked positions only (MosaicBERT's sparse
head); ``ModernBertForMaskedLM`` does too (``sparse_prediction=True``); ``BertForMaskedLM`` has
no such option and projects every position onto the vocabulary.

Data: Brown corpus sentences + BBC News paragraphs from ``--data-dir`` (default
``$JAXBERT_DATA`` or ``../shared/data``), shuffled together (seeded) with their natural length
distribution, tokenized with all-MiniLM-L6-v2's WordPiece tokenizer (``--tokenizer``), truncated
at ``--max-length`` 512. Batches are built in order: sequences are added while ``rows x L`` stays
within ``--batch-tokens``, where ``L`` is the batch's longest sequence rounded up to a length
bucket (64, 128, 256, 384, 512); the batch is then padded to ``batch_tokens // L`` rows, so each
``L`` is one compiled shape (dynamic padding, as transformers' collators do). Masking:
``--mlm-probability`` (0.3) of each sequence's non-special tokens, replaced by ``[MASK]``.

Model FLOPs per step (documented convention; "useful" work only, the same count for every
implementation of an architecture, so padded and unpadded runs are judged by the same yardstick)::

    6 * P_body * n_tokens                      # encoder body: params without embeddings / head
  + 6 * (E*E + E*V) * n_masked                 # MLM head transform + vocabulary projection
  + 12 * E * sum_layers sum_seqs pairs         # attention: QK^T and AV, fwd + bwd (x3), 2 flop/MAC
                                               # pairs = query-key pairs a layer really attends
                                               # (n^2 global; window-limited for sliding layers)

``n_tokens`` are the non-pad tokens, ``n_masked`` the MLM targets. MFU = model FLOPs / time /
peak, with ``peak`` = the best dense matmul rate measured in this run (jax and torch, the run's
dtype, square matrices: 2048 on CPU, 8192 on GPU).

Commands
--------
CPU (this repository's environment; run on a quiet machine: ``uptime`` load well under the cores)::

    .venv/bin/python benchmarks/encoder_throughput.py --device-kind cpu --dtype float32 \\
        --batch-tokens 4096 --steps 8 --warmup 2
    # quick validation: --batch-tokens 1024 --steps 2 --warmup 1

GPU (H100 / H200), from the repository root; jax needs CUDA (``python -c "import jax;
print(jax.devices())"`` must list a GPU) and torch a CUDA build for the torch rows::

    pip install -U "jax[cuda12]" flax optax tokenizers safetensors   # only if jax has no GPU backend
    python -m jaxbert.assets fetch minilm                               # or pass --tokenizer PATH
    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/encoder_throughput.py \\
        --device-kind gpu --dtype bfloat16 --batch-tokens 65536 --steps 10 --warmup 2
    # add --skip-torch when torch has no CUDA build; --attention-implementation xla to avoid cuDNN
    # Measured on an H200 (2026-11-26): at 65536 padded tokens jax:bert-base (padded, attention
    # dropout -> XLA reference attention with fp32 logits) runs out of memory (a 49 GiB buffer); the
    # run records the error and goes on. --batch-tokens 32768 fits every model.

On GPU the jaxbert models use ``attention_implementation="cudnn"`` (cuDNN fused attention via
``jax.nn.dot_product_attention`` where it applies; a model whose cuDNN compile fails is retried
with ``"xla"`` and the error recorded); torch runs under ``torch.autocast(bfloat16)`` with fp32
weights, jaxbert with fp32 parameters and bf16 compute. Torch runs first, then its memory is
released for jax (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set if absent).

Output: ``benchmarks/results/encoder_throughput.json`` (``--out-dir`` to change), also printed.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.ensure_repo_on_path()

LENGTH_BUCKETS = (64, 128, 256, 384, 512)
JAX_MODELS = {"jax:bert-base": ("bert-base", False), "jax:bert-base-unpad": ("bert-base", True),
              "jax:mosaicbert-base": ("mosaicbert-base", True), "jax:modernbert-base": ("modernbert-base", True)}
TORCH_MODELS = {"torch:bert-base": "bert-base", "torch:modernbert-base": "modernbert-base"}
TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)


# ----------------------------------------------------------------------------- data


def read_texts(data_dir: Path) -> list[str]:
    """Brown sentences (tokens joined by spaces) + BBC paragraphs (blank-line separated)."""
    brown_path, bbc_path = data_dir / "brown" / "pos_train.jsonl.gz", data_dir / "bbc_news" / "train.jsonl"
    for p in (brown_path, bbc_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (--data-dir {data_dir} must hold the shared data pack)")
    with gzip.open(brown_path, "rt", encoding="utf-8") as f:
        brown = [" ".join(json.loads(line)["tokens"]) for line in f if line.strip()]
    bbc = []
    with open(bbc_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                bbc += [p.strip() for p in json.loads(line)["text"].split("\n\n") if p.strip()]
    return brown + bbc


def load_tokenizer(path: str | None):
    from tokenizers import Tokenizer

    if path is None:
        from jaxbert.assets import fetch
        path = str(fetch("minilm"))
    p = Path(path)
    p = p / "tokenizer.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file {p} not found (--tokenizer)")
    return Tokenizer.from_file(str(p))


def bucket_length(n: int, max_length: int) -> int:
    for b in LENGTH_BUCKETS:
        if n <= b and b <= max_length:
            return b
    return max_length


def make_batches(texts, tok, args, np) -> list[dict]:
    """Token-budget batches (see module docstring), masked for MLM, with host unpadding plans."""
    from jaxbert.models.layers import unpad

    tok.no_padding()
    tok.enable_truncation(args.max_length)
    mask_id, special = tok.token_to_id("[MASK]"), {tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
    order = list(range(len(texts)))
    random.Random(args.seed).shuffle(order)
    rng = np.random.default_rng(args.seed)
    need = args.warmup + args.steps
    batches, cursor, chunk = [], 0, 4096
    pending: list[list[int]] = []
    while len(batches) < need:
        if not pending:
            if cursor >= len(order):
                raise ValueError("ran out of text for the requested steps")
            enc = tok.encode_batch([texts[i] for i in order[cursor:cursor + chunk]])
            cursor += chunk
            pending = [e.ids for e in enc if len(e.ids) > 2]
        seqs: list[list[int]] = []
        while pending:
            longest = max([len(s) for s in seqs] + [len(pending[0])])
            if (len(seqs) + 1) * bucket_length(longest, args.max_length) > args.batch_tokens and seqs:
                break
            seqs.append(pending.pop(0))
        L = bucket_length(max(len(s) for s in seqs), args.max_length)
        B = max(args.batch_tokens // L, len(seqs))
        M = math.ceil(args.mlm_probability * L)
        ids = np.zeros((B, L), np.int32)
        mask = np.zeros((B, L), np.int32)
        positions = np.zeros((B, M), np.int32)
        labels = np.zeros((B, M), np.int32)
        weights = np.zeros((B, M), np.float32)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
            cand = [i for i, t in enumerate(s) if t not in special]
            k = min(M, max(1, round(args.mlm_probability * len(cand))))
            pick = np.sort(rng.choice(cand, k, replace=False))
            positions[r, :k], labels[r, :k], weights[r, :k] = pick, ids[r, pick], 1.0
            ids[r, pick] = mask_id
        batches.append({"input_ids": ids, "attention_mask": mask, "masked_positions": positions,
                        "labels": labels, "weights": weights,
                        "unpad_index": unpad.plan(mask, num_buckets=args.unpad_buckets),
                        "lengths": np.array([len(s) for s in seqs], np.int32)})
    return batches


# ----------------------------------------------------------------------------- flops


def attention_pairs(n: int, layer_type: str, window: int) -> int:
    if layer_type == "global" or n == 0:
        return n * n
    h = window // 2
    i = list(range(n))
    return sum(min(n - 1, q + h) - max(0, q - h) + 1 for q in i)


def model_flops(cfg, batch: dict) -> float:
    e, v = cfg.hidden_size, cfg.vocab_size
    n_tokens = int(batch["attention_mask"].sum())
    n_masked = int(batch["weights"].sum())
    pairs = 0
    for t in cfg.attention_layer_types:
        pairs += sum(attention_pairs(int(n), t, cfg.local_attention) for n in batch["lengths"])
    return (6.0 * cfg.non_embedding_param_count() * n_tokens + 6.0 * (e * e + e * v) * n_masked
            + 12.0 * e * pairs)


def jax_config(preset_name: str, args):
    from jaxbert.models import registry

    over = dict(dtype=args.dtype, attention_implementation=args.attention_implementation)
    if args.tiny:
        over.update(TINY)
        if preset_name.startswith("modernbert"):
            over.update(local_attention=32)
    return registry.get(preset_name, **over)[0]


# ----------------------------------------------------------------------------- peak


def matmul_peak(args, np) -> dict:
    """Best dense matmul rate (TFLOP/s) through jax and torch in the run's dtype."""
    import jax
    import jax.numpy as jnp

    n = 8192 if args.device_kind == "gpu" else 2048
    reps = 10 if args.device_kind == "gpu" else 4
    out = {"size": n, "dtype": args.dtype}
    dt = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    b = jax.random.normal(jax.random.key(1), (n, n), dt)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    out["jax_tflops"] = 2 * n ** 3 / best / 1e12
    del a, b
    if not args.skip_torch:
        import torch
        dev = "cuda" if args.device_kind == "gpu" else "cpu"
        tdt = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        x = torch.randn(n, n, dtype=tdt, device=dev)
        y = torch.randn(n, n, dtype=tdt, device=dev)
        x @ y
        best = float("inf")
        for _ in range(reps):
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x @ y
            if dev == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out["torch_tflops"] = 2 * n ** 3 / best / 1e12
        del x, y
    out["peak_tflops"] = max(out["jax_tflops"], out.get("torch_tflops", 0.0))
    return out


# ----------------------------------------------------------------------------- jax


def run_jax(name: str, batches: list[dict], args, np) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    import flax.linen as nn
    from jaxbert.models.transformer.model import Encoder
    from jaxbert.models.task_models import build_task_model

    preset_name, unpadded = JAX_MODELS[name]
    cfg = jax_config(preset_name, args)
    result = {"framework": "jaxbert", "preset": preset_name, "unpadded": unpadded,
              "attention_implementation": cfg.attention_implementation}
    try:
        result.update(_run_jax_cfg(cfg, unpadded, batches, args, np, jax, jnp, optax, Encoder, build_task_model))
    except Exception as e:  # noqa: BLE001 - cuDNN may reject a shape: retry with the XLA reference
        if cfg.attention_implementation == "xla":
            raise
        common.say(f"{name}: {cfg.attention_implementation} failed ({type(e).__name__}: {str(e)[:300]}); retrying with xla")
        result["fallback_error"] = f"{type(e).__name__}: {str(e)[:2000]}"
        cfg = cfg.replace(attention_implementation="xla")
        result["attention_implementation"] = "xla"
        result.update(_run_jax_cfg(cfg, unpadded, batches, args, np, jax, jnp, optax, Encoder, build_task_model))
    result["model_flops"] = [model_flops(cfg, b) for b in batches[args.warmup:]]
    return result


def _run_jax_cfg(cfg, unpadded, batches, args, np, jax, jnp, optax, Encoder, build_task_model) -> dict:
    import flax.linen as nn

    model = build_task_model(cfg, Encoder, "mlm")
    tx = optax.adamw(1e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01)

    def loss_fn(params, batch, rng):
        out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                          masked_positions=batch["masked_positions"], unpad_index=batch.get("unpad_index"),
                          deterministic=False, rngs={"dropout": rng})
        ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["labels"])
        return (ce * batch["weights"]).sum() / jnp.maximum(batch["weights"].sum(), 1.0)

    def step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    keys = ["input_ids", "attention_mask", "masked_positions", "labels", "weights"] + (["unpad_index"] if unpadded else [])
    feed = [{k: b[k] for k in keys} for b in batches]
    t0 = time.perf_counter()
    params = jax.jit(lambda r: nn.unbox(model.init(r, feed[0]["input_ids"][:1, :8])["params"]))(
        jax.random.key(args.seed))
    opt_state = jax.jit(tx.init)(params)
    init_s = time.perf_counter() - t0
    jstep = jax.jit(step, donate_argnums=(0, 1))
    abstract = lambda t: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
    shapes = {}
    for b in feed:
        shapes.setdefault(tuple((k, v.shape) for k, v in b.items()), b)
    rng = jax.random.key(args.seed + 1)
    t0 = time.perf_counter()

    def compile_one(b):
        return jstep.lower(abstract(params), abstract(opt_state), abstract(b), rng).compile()

    with ThreadPoolExecutor(max_workers=max(1, min(len(shapes), args.compile_threads))) as pool:
        compiled = dict(zip(shapes, pool.map(compile_one, shapes.values())))
    compile_s = time.perf_counter() - t0
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    times, losses = [], []
    load_before = common.load_average()
    for i, b in enumerate(feed):
        fn = compiled[tuple((k, v.shape) for k, v in b.items())]
        rng, sub = jax.random.split(rng)
        dev_b = jax.device_put(b)
        jax.block_until_ready(dev_b)
        t = time.perf_counter()
        params, opt_state, loss = fn(params, opt_state, dev_b, sub)
        loss = float(loss)  # blocks
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
            losses.append(loss)
    del params, opt_state, compiled
    gc.collect()
    return {"params": n_params, "init_s": init_s, "compile_s": compile_s, "compiled_shapes": len(shapes),
            "step_s": times, "loss": losses, "load_before": load_before, "load_after": common.load_average()}


# ----------------------------------------------------------------------------- torch


def run_torch(name: str, batches: list[dict], args, np) -> dict:
    import torch
    import transformers

    from jaxbert.models.modernbert import hf as modernbert_hf

    preset_name = TORCH_MODELS[name]
    cfg = jax_config(preset_name, args)  # the same shapes as the jaxbert model of that name
    dev = "cuda" if args.device_kind == "gpu" else "cpu"
    torch.manual_seed(args.seed)
    if preset_name.startswith("bert"):
        hf_cfg = transformers.BertConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
            hidden_dropout_prob=cfg.hidden_dropout_prob, attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
            max_position_embeddings=cfg.max_position_embeddings, layer_norm_eps=cfg.layer_norm_eps)
        model = transformers.BertForMaskedLM._from_config(hf_cfg, attn_implementation="sdpa")
    else:
        hf = {k: v for k, v in modernbert_hf.config_to_hf(cfg).items() if k not in ("model_type", "architectures")}
        hf_cfg = transformers.ModernBertConfig(**hf, sparse_prediction=True)
        model = transformers.ModernBertForMaskedLM._from_config(hf_cfg, attn_implementation="sdpa")
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    use_amp = args.dtype == "bfloat16"
    times, losses = [], []
    load_before = common.load_average()
    for i, b in enumerate(batches):
        labels = np.full(b["input_ids"].shape, -100, np.int64)
        rows, cols = np.nonzero(b["weights"])
        labels[rows, b["masked_positions"][rows, cols]] = b["labels"][rows, cols]
        ids = torch.tensor(b["input_ids"], dtype=torch.long, device=dev)
        mask = torch.tensor(b["attention_mask"], dtype=torch.long, device=dev)
        lab = torch.tensor(labels, device=dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=use_amp):
            loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        opt.step()
        loss = float(loss.detach())  # synchronises
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
            losses.append(loss)
    n_params = sum(p.numel() for p in model.parameters())
    del model, opt
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    return {"framework": "torch", "preset": preset_name, "unpadded": False, "params": n_params,
            "attention_implementation": "sdpa", "amp_bf16": use_amp, "step_s": times, "loss": losses,
            "load_before": load_before, "load_after": common.load_average(),
            "model_flops": [model_flops(cfg, b) for b in batches[args.warmup:]]}


# ----------------------------------------------------------------------------- main


def summarize(res: dict, timed: list[dict], peak: float) -> dict:
    t = sum(res["step_s"])
    tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    slots = sum(b["attention_mask"].size for b in timed)
    flops = sum(res["model_flops"])
    s = {"steps": len(res["step_s"]), "wall_s": t, "step_s_median": statistics.median(res["step_s"]),
         "nonpad_tokens_per_s": tokens / t, "padded_tokens_per_s": slots / t,
         "model_tflops_per_s": flops / t / 1e12, "mfu": flops / t / 1e12 / peak}
    if res.get("unpadded"):
        s["stream_slots_per_s"] = sum(b["unpad_index"].size for b in timed) / t
    return s


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device-kind", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: float32 on cpu, bfloat16 on gpu)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default 8 cpu / 20 gpu)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model after compilation")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per batch, rows x L (default 4096 cpu / 65536 gpu)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--mlm-probability", type=float, default=0.3)
    p.add_argument("--unpad-buckets", type=int, default=8, help="stream-row bucket sizes per length")
    p.add_argument("--models", default=",".join(list(TORCH_MODELS) + list(JAX_MODELS)))
    p.add_argument("--skip-torch", action="store_true", help="drop the torch:* models (no CUDA torch)")
    p.add_argument("--attention-implementation", default=None,
                   help="jaxbert attention: xla | dot_product_attention | cudnn (default: xla cpu, cudnn gpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: usable cores)")
    p.add_argument("--compile-threads", type=int, default=None, help="parallel XLA compiles (default: cores)")
    p.add_argument("--data-dir", default=os.environ.get("JAXBERT_DATA", str(common.REPO_ROOT.parent / "shared" / "data")))
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or a dir holding it (default: MiniLM asset)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes of every model (smoke test of the script)")
    p.add_argument("--prng-impl", default="unsafe_rbg",
                   help="jax_default_prng_impl for dropout masks (unsafe_rbg: XLA's RngBitGenerator, as MaxText "
                        "uses; threefry2x32 is jax's default and much slower for large dropout masks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="encoder_throughput")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    gpu = args.device_kind == "gpu"
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.steps = args.steps or (10 if gpu else 8)
    args.batch_tokens = args.batch_tokens or (65536 if gpu else 4096)
    args.attention_implementation = args.attention_implementation or ("cudnn" if gpu else "xla")
    args.compile_threads = args.compile_threads or common.usable_cores()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in JAX_MODELS and m not in TORCH_MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {list(TORCH_MODELS) + list(JAX_MODELS)}")
    if args.skip_torch:
        models = [m for m in models if not m.startswith("torch:")]
    if args.batch_tokens < args.max_length:
        p.error(f"--batch-tokens {args.batch_tokens} must hold one --max-length {args.max_length} row")

    import numpy as np
    import jax

    jax.config.update("jax_default_prng_impl", args.prng_impl)
    backend = jax.default_backend()
    if gpu and backend != "gpu":
        raise SystemExit(f"--device-kind gpu but jax's backend is {backend!r}: install jax with CUDA "
                         "(pip install -U 'jax[cuda12]') or run with --device-kind cpu")
    if any(m.startswith("torch:") for m in models):
        import torch
        torch.set_num_threads(args.threads or common.usable_cores())
        if gpu and not torch.cuda.is_available():
            raise SystemExit("torch has no CUDA device: pass --skip-torch")

    started = common.now_iso()
    t0 = time.perf_counter()
    common.say("reading and tokenizing text")
    texts = read_texts(Path(args.data_dir))
    batches = make_batches(texts, load_tokenizer(args.tokenizer), args, np)
    timed = batches[args.warmup:]
    common.say(f"{len(batches)} batches; shapes {sorted({b['input_ids'].shape for b in batches})}")
    peak = matmul_peak(args, np)
    common.say(f"matmul peak {peak}")
    results = {}
    # torch first: on GPU its cached memory is released before jax allocates
    for m in [m for m in models if m.startswith("torch:")] + [m for m in models if m.startswith("jax:")]:
        common.say(f"running {m}")
        try:
            r = run_torch(m, batches, args, np) if m.startswith("torch:") else run_jax(m, batches, args, np)
        except Exception as e:  # noqa: BLE001 - keep the other models' numbers; the error is recorded
            common.say(f"{m} FAILED: {type(e).__name__}: {str(e)[:500]}")
            results[m] = {"error": f"{type(e).__name__}: {str(e)[:4000]}"}
            continue
        r["summary"] = summarize(r, timed, peak["peak_tflops"])
        results[m] = r
        common.say(f"{m}: {r['summary']['nonpad_tokens_per_s']:.0f} non-pad tok/s, MFU {r['summary']['mfu']:.3f}")
        common.write_result(args.name + "_partial", {"args": vars(args), "matmul_peak": peak, "runs": results},
                            args.out_dir, quiet=True)
    results_ok = {m: r for m, r in results.items() if "summary" in r}
    jax_best = max((r["summary"]["nonpad_tokens_per_s"], m) for m, r in results_ok.items() if m.startswith("jax:")) \
        if any(m.startswith("jax:") for m in results_ok) else None
    headline = {}
    if jax_best and "torch:bert-base" in results_ok:
        ratio = jax_best[0] / results_ok["torch:bert-base"]["summary"]["nonpad_tokens_per_s"]
        headline = {"best_jaxbert": jax_best[1], "ratio_best_jaxbert_over_torch_bert": ratio,
                    "target": 1.5, "target_met": ratio >= 1.5}
    data_stats = {
        "batches": len(batches), "timed_batches": len(timed),
        "shapes": sorted({tuple(b["input_ids"].shape) for b in batches}),
        "nonpad_tokens_timed": sum(int(b["attention_mask"].sum()) for b in timed),
        "padded_slots_timed": sum(b["attention_mask"].size for b in timed),
        "stream_slots_timed": sum(b["unpad_index"].size for b in timed),
        "masked_tokens_timed": int(sum(b["weights"].sum() for b in timed)),
        "sequence_length_mean": float(np.mean(np.concatenate([b["lengths"] for b in batches]))),
        "sequence_length_max": int(max(b["lengths"].max() for b in batches)),
    }
    payload = {
        "benchmark": "encoder_throughput", "started": started, "wall_s": time.perf_counter() - t0,
        "args": vars(args), "machine": common.machine(),
        "device": {"backend": backend, "devices": [str(d) for d in jax.devices()],
                   "kind": getattr(jax.devices()[0], "device_kind", None)},
        "matmul_peak": peak, "data": data_stats, "headline": headline,
        "summary": {m: r.get("summary", r.get("error")) for m, r in results.items()}, "runs": results,
        "flops_convention": "6*P_body*n_tokens + 6*(E^2+E*V)*n_masked + 12*E*sum(attended query-key pairs); "
                            "MFU = model FLOPs / time / measured matmul peak",
    }
    common.write_result(args.name, payload, args.out_dir, quiet=True)
    partial = Path(args.out_dir or common.RESULTS_DIR) / f"{args.name}_partial.json"
    partial.unlink(missing_ok=True)  # the complete result supersedes the per-model checkpoints
    print(json.dumps({"headline": headline, "matmul_peak": peak,
                      "summary": payload["summary"]}, indent=1, default=str))
    return payload


if __name__ == "__main__":
    main()
