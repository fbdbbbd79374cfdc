"""Helpers shared by the benchmark scripts: machine description, load, JSON results.

Nothing here imports jax or torch at module import time, so a script can set ``XLA_FLAGS`` /
thread counts before the frameworks start.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Environment variables that change how many threads the frameworks use or how XLA compiles.
THREAD_ENV = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "JAX_PLATFORMS", "JAX_ENABLE_X64",
              "KMP_BLOCKTIME", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def ensure_repo_on_path() -> None:
    """Let ``python benchmarks/x.py`` import ``jaxbert`` and ``experiments`` from the checkout."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def usable_cores() -> int:
    """CPU cores this process may run on (``sched_getaffinity``; falls back to ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """``model name`` from ``/proc/cpuinfo`` (first core), or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD-relevant flags of the first core (avx2, avx512*, amx*, fma)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (what ``uptime`` prints); ``None`` where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(),
            **{name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers",
                                                 "numpy", "grain", "tokenizers")}}


def thread_settings() -> dict[str, Any]:
    """Thread-related environment plus, for frameworks already imported, their own thread counts."""
    out: dict[str, Any] = {"env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out["torch_num_threads"] = torch.get_num_threads()
        out["torch_num_interop_threads"] = torch.get_num_interop_threads()
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        out["jax_backend"] = jax.default_backend()
        out["jax_devices"] = [str(d) for d in jax.devices()]
        # XLA:CPU sizes its intra-op (Eigen) pool to the machine's cores; no public getter exists.
        out["xla_cpu_threads"] = f"all usable cores ({usable_cores()}) unless XLA_FLAGS says otherwise"
    return out


def machine() -> dict[str, Any]:
    """Everything needed to judge a number later: CPU, cores, memory, load, versions, threads."""
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "usable_cores": usable_cores(),
        "os_cpu_count": os.cpu_count(),
        "memory_gib": memory_gib(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "versions": versions(),
        "threads": thread_settings(),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_result(name: str, payload: dict[str, Any], out_dir: str | os.PathLike | None = None,
                 quiet: bool = False) -> Path:
    """Write ``payload`` to ``<out_dir or benchmarks/results>/<name>.json`` and print it to stdout."""
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    text = json.dumps(payload, indent=2, sort_keys=False, default=_default)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    if not quiet:
        print(text)
    print(f"[bench] wrote {path}", file=sys.stderr, flush=True)
    return path


def _default(obj: Any) -> Any:
    try:
        import numpy as np
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def say(msg: str) -> None:
    """Progress line on stderr (stdout is reserved for the JSON result)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Timer:
    """``with Timer() as t: ...``; ``t.seconds`` afterwards (wall clock, ``perf_counter``)."""

    def __enter__(self):
        self._t0 = time.perf_counter()
        self.seconds = None
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        return False
