"""Host memory of a training process: keep freed memory for reuse instead of returning it.

XLA:CPU allocates one temporary buffer per execution (activations, gradients, scratch: 4.0 GiB
for the BERT-base train step at batch 32 x 128) with ``malloc`` and frees it when the execution
ends. glibc serves every allocation above 32 MiB with a fresh ``mmap`` and gives it back with
``munmap`` on ``free``, so each step faults the whole buffer in again, page by page: about a
million 4-KiB page faults and 3 CPU-seconds of kernel time per BERT-base step (measured with
``getrusage`` on the 2-core machine: step 9.2-9.5 s, then 7.9-8.2 s with freed memory kept).

:func:`keep_freed_host_memory` tells glibc (``mallopt``) to serve large blocks from the heap
and never trim it, so a freed step buffer is reused by the next step with no page faults:

* ``M_ARENA_MAX = 1``: every thread allocates from the main arena. A thread with an arena of
  its own (XLA executes on its own threads) would still get a large block from ``mmap``;
  only the main arena can grow its heap to a multi-GiB block.
* ``M_MMAP_MAX = 0``: no block is served by ``mmap``.
* ``M_TRIM_THRESHOLD = SIZE_MAX``: the top of the heap is never returned to the kernel.

A small block left inside a freed region can make the heap grow by one buffer once or twice
more before it has room for both (the page faults of those steps); after that it is steady.
The price: the process keeps its peak heap (resident memory does not fall after a peak), and
all threads share one allocator lock (XLA:CPU's kernels do not allocate in their loops).
That fits a process that runs training or inference steps until it exits, which is why the
entry points call it (``python -m experiments.launch``, the benchmarks), not ``import jaxbert``.
In a notebook call it first, before the first jax computation: threads that have already
allocated keep their own arenas, and their large blocks are still mapped afresh.

``JAXBERT_HOST_MALLOC`` selects: ``keep`` (the default) or ``system`` (change nothing). Only
glibc (Linux) has these settings; elsewhere the call does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

HOST_MALLOC_ENV = "JAXBERT_HOST_MALLOC"
HOST_MALLOC_CHOICES = ("keep", "system")

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied: dict | None = None


def host_malloc_choice() -> str:
    """The ``JAXBERT_HOST_MALLOC`` setting (``keep`` when unset); a clear error for anything else."""
    raw = os.environ.get(HOST_MALLOC_ENV, "")
    choice = raw.strip().lower() or "keep"
    if choice not in HOST_MALLOC_CHOICES:
        raise ValueError(f"{HOST_MALLOC_ENV}={raw!r}; known: {', '.join(HOST_MALLOC_CHOICES)}")
    return choice


def _jax_backend_started() -> bool:
    """Whether jax has created its backends (and with them XLA's threads) in this process."""
    import sys
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume the worst
        return True


def keep_freed_host_memory() -> dict:
    """Make glibc keep freed memory for reuse (see the module docstring); idempotent.

    Returns what was done, for run records: ``{"host_malloc": "keep"|"system"|"unsupported",
    "late": bool}``. ``late`` is True when jax's backend already existed at the first call, so
    XLA's threads may still map their large blocks afresh.
    """
    global _applied
    if _applied is not None:
        return dict(_applied)
    choice = host_malloc_choice()
    late = _jax_backend_started()
    if choice == "system":
        _applied = {"host_malloc": "system", "late": late}
        return dict(_applied)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _applied = {"host_malloc": "unsupported", "late": late,
                    "reason": f"needs glibc; this is {platform.system()} {platform.libc_ver()[0] or 'no glibc'}"}
        return dict(_applied)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    # glibc converts the int to size_t, so -1 is SIZE_MAX: never trim.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    failed = [param for param, value in settings if libc.mallopt(param, value) != 1]
    if failed:
        raise OSError(f"mallopt refused parameter(s) {failed} (glibc {platform.libc_ver()[1]})")
    _applied = {"host_malloc": "keep", "late": late}
    return dict(_applied)
