"""Sentence-embedding throughput: jaxbert ``SentenceEncoder`` vs ``sentence-transformers`` (torch), one run.

Claim measured: encoding a corpus with all-MiniLM-L6-v2 through jaxbert is at least as fast as
``SentenceTransformer.encode`` on the same CPU, with the same thread count and batch size,
and gives the same embeddings (max abs deviation and min cosine are reported).

Usage (from the repository root)::

    python benchmarks/embed_throughput.py                      # full run, JSON to stdout + file
    python benchmarks/embed_throughput.py --limit 200          # quick check
    python benchmarks/embed_throughput.py --threads 1 --out /tmp/t1.json

Corpora (from ``$JAXBERT_DATA``, default ``<repo>/../shared/data``):

* ``rotten_tomatoes``: validation + test snippets (2,551 short sentences, ~30 tokens).
* ``bbc_news``: the 425 test-split articles (``--bbc-split all`` adds the 1,699 train articles),
  truncated to 256 tokens by both libraries (MiniLM's ``max_seq_length``), so nearly every
  sequence is 256 tokens long.

Threads. ``--threads N`` (default ``os.cpu_count()``) is applied to both frameworks before
either is imported: the process is pinned to N CPUs (``os.sched_setaffinity``), torch gets
``torch.set_num_threads(N)`` (and ``OMP_NUM_THREADS=N``), and XLA gets
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=N`` (appended to any
XLA_FLAGS already set). The affinity mask is what really bounds both.

Protocol per corpus: jaxbert compiles every batch shape the corpus needs
(``SentenceEncoder.warmup``; reported as ``compile_s``, never part of a timed run); each
library then runs one untimed warm-up encode of the whole corpus (``first_call_s``); then
``--repeats`` timed encodes, alternating jaxbert / sentence-transformers so that background
load hits both alike; the best wall time counts. Process CPU seconds (all threads; includes
spin-waiting of idle pool threads) are recorded per run too. The JSON records the load
average before and after, because a busy machine makes every number here slower.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "embed_throughput.json"
MAX_LENGTH = 256  # all-MiniLM-L6-v2 max_seq_length; both libraries truncate there


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="use only the first N texts of each corpus")
    p.add_argument("--repeats", type=int, default=2, help="timed encodes per library (best counts)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--bbc-split", choices=("test", "all"), default="test")
    p.add_argument("--corpora", default="rotten_tomatoes,bbc_news")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="jaxbert compute dtype")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def configure_threads(n: int) -> None:
    """Bound both frameworks to ``n`` CPUs; must run before jax / torch are imported."""
    if "jax" in sys.modules or "torch" in sys.modules:
        raise RuntimeError("configure_threads must run before jax and torch are imported")
    cpus = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(cpus):
        raise SystemExit(f"--threads {n}: this process may use {len(cpus)} CPUs")
    os.sched_setaffinity(0, cpus[:n])
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}".strip()


def read_jsonl_texts(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def load_corpora(names: list[str], bbc_split: str, limit: int | None) -> dict[str, list[str]]:
    data = Path(os.environ.get("JAXBERT_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser()
    files = {
        "rotten_tomatoes": ["rotten_tomatoes/validation.jsonl", "rotten_tomatoes/test.jsonl"],
        "bbc_news": ["bbc_news/test.jsonl"] + (["bbc_news/train.jsonl"] if bbc_split == "all" else []),
    }
    out = {}
    for name in names:
        if name not in files:
            raise SystemExit(f"unknown corpus {name!r}; known: {sorted(files)}")
        missing = [f for f in files[name] if not (data / f).is_file()]
        if missing:
            raise SystemExit(f"data files {missing} not found under {data} (set JAXBERT_DATA)")
        texts = [t for f in files[name] for t in read_jsonl_texts(data / f)]
        out[name] = texts[:limit] if limit else texts
    return out


def machine_info(threads: int) -> dict:
    import jax
    import jaxlib
    import sentence_transformers
    import torch
    import transformers

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model, "cpu_count": os.cpu_count(), "threads": threads,
        "affinity": sorted(os.sched_getaffinity(0)), "platform": platform.platform(),
        "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, cpu: list | None = None):
    """Wall seconds of ``fn()`` and its result; appends process CPU seconds (all threads) to ``cpu``."""
    c0, t0 = _cpu_s(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(_cpu_s() - c0)
    return wall, out


def bench_corpus(enc, st, texts: list[str], batch_size: int, repeats: int) -> dict:
    import numpy as np

    n = len(texts)
    lengths = np.array([len(x) for x in enc.tokenize(texts)])
    plan = enc._plan(lengths, batch_size)
    padded = sum(rows * seq for _, rows, seq in plan)

    compile_s, shapes = timed(lambda: enc.warmup(texts, batch_size=batch_size))
    jax_first, _ = timed(lambda: enc.encode(texts, batch_size=batch_size))
    st_first, _ = timed(lambda: st.encode(texts, batch_size=batch_size, convert_to_numpy=True))
    jax_times, st_times, jax_cpu, st_cpu = [], [], [], []
    for _ in range(repeats):
        t, ours = timed(lambda: enc.encode(texts, batch_size=batch_size), jax_cpu)
        jax_times.append(t)
        t, ref = timed(lambda: st.encode(texts, batch_size=batch_size, convert_to_numpy=True), st_cpu)
        st_times.append(t)
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    jax_best, st_best = min(jax_times), min(st_times)
    return {
        "texts": n,
        "tokens": int(lengths.sum()),
        "mean_tokens": round(float(lengths.mean()), 1),
        "truncated_to_256": int((lengths == MAX_LENGTH).sum()),
        "jaxbert": {
            "sentences_per_s": round(n / jax_best, 2), "best_s": round(jax_best, 3),
            "runs_s": [round(t, 3) for t in jax_times], "runs_cpu_s": [round(t, 2) for t in jax_cpu],
            "compile_s": round(compile_s, 2),
            "compiled_shapes": [list(s) for s in shapes], "first_call_s": round(jax_first, 3),
            "padding_efficiency": round(float(lengths.sum()) / padded, 3),
        },
        "sentence_transformers": {
            "sentences_per_s": round(n / st_best, 2), "best_s": round(st_best, 3),
            "runs_s": [round(t, 3) for t in st_times], "runs_cpu_s": [round(t, 2) for t in st_cpu],
            "first_call_s": round(st_first, 3),
        },
        "ratio_jaxbert_over_st": round(st_best / jax_best, 3),
        # Same ratio from process CPU seconds: less sensitive to other load on the machine
        # (exact for --threads 1; with more threads, idle pool threads' spinning counts too).
        "ratio_cpu_jaxbert_over_st": round(min(st_cpu) / min(jax_cpu), 3),
        "max_abs_deviation": float(np.abs(ours - ref).max()),
        "min_cosine": float(cos.min()),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    configure_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    from jaxbert.assets import fetch
    from jaxbert.inference.sentence_encoder import SentenceEncoder

    corpora = load_corpora(args.corpora.split(","), args.bbc_split, args.limit)
    model_dir = fetch("minilm")
    load_before = os.getloadavg()
    enc = SentenceEncoder.from_pretrained(model_dir, dtype=args.dtype)
    st = SentenceTransformer(str(model_dir), device="cpu")
    if enc.max_length != MAX_LENGTH or st.max_seq_length != MAX_LENGTH:
        raise SystemExit(f"max lengths differ: jaxbert {enc.max_length}, sentence-transformers {st.max_seq_length}")
    st.eval()
    result = {
        "benchmark": "embed_throughput",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (jaxbert.assets 'minilm')",
        "batch_size": args.batch_size, "repeats": args.repeats, "max_length": MAX_LENGTH,
        "jaxbert_dtype": args.dtype, "limit": args.limit, "bbc_split": args.bbc_split,
        "machine": machine_info(args.threads),
        "corpora": {},
    }
    with torch.inference_mode():
        for name, texts in corpora.items():
            print(f"[embed_throughput] {name}: {len(texts)} texts", file=sys.stderr, flush=True)
            result["corpora"][name] = bench_corpus(enc, st, texts, args.batch_size, args.repeats)
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
