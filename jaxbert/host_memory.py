"""Host memory of a training process: keep freed memory for reuse instead of returning it.

XLA:CPU allocates one temporary buffer per execution (activations, gradients, scratch: 3.7 GiB
for the BERT-base train step at batch 32 x 128) with ``malloc`` and frees it when the execution
ends. glibc serves every allocation above 32 MiB with a fresh ``mmap`` and gives it back with
``munmap`` on ``free``, so each step faults the whole buffer in again, page by page: about a
million 4-KiB page faults and 3.5 CPU-seconds of kernel time per BERT-base step (measured with
``getrusage`` on the 2-core machine: step 8.9-9.3 s; 6.6-7.1 s with these settings, resident
memory unchanged at 5.7 GiB over 12 steps).

:func:`keep_freed_host_memory` makes the buffer come from, and return to, the main thread's
heap, where the next step finds it again with its pages still mapped:

* ``M_MMAP_MAX = 0`` (``mallopt``): no block is served by ``mmap``;
* ``M_TRIM_THRESHOLD = SIZE_MAX``: the top of the heap is never returned to the kernel;
* ``jax_cpu_enable_async_dispatch = False``: XLA:CPU runs a single-device computation on the
  calling thread instead of its own. That matters: glibc gives every other thread an arena of
  its own, made of 64-MiB heaps, and such an arena serves a multi-GiB block with ``mmap``
  whatever ``M_MMAP_MAX`` says; only the main arena can grow its heap to hold it. (Forcing all
  threads onto the main arena, ``M_ARENA_MAX = 1``, also removes the faults, but the threads'
  small blocks then land in the freed step buffer and the heap grows by another buffer every
  few steps: 5.6 -> 13.0 GiB resident after 9 steps.)

The price: the process keeps its peak heap (resident memory does not fall after a peak), and
Python waits for each computation to finish instead of dispatching ahead (on CPU the step
is the work; grain's read threads keep prefetching meanwhile). That fits a process that runs
training or inference steps until it exits, which is why the entry points call it (``python -m
experiments.launch``, the benchmarks), not ``import jaxbert``. In a notebook, call it before the
first jax computation: the dispatch setting takes effect when jax creates its CPU backend.
Computations over several CPU devices (a simulated mesh) still run on XLA's threads. In about
one short run in twenty of ``tests/test_host_memory.py`` some calls still mapped their buffer
afresh (cause not found); the BERT-base step ran 12 steps with no faults after the first.

``JAXBERT_HOST_MALLOC`` selects: ``keep`` (the default) or ``system`` (change nothing). Only
glibc (Linux) has these settings; elsewhere the call does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys

from jaxbert.env_choice import env_choice

HOST_MALLOC_ENV = "JAXBERT_HOST_MALLOC"
HOST_MALLOC_CHOICES = ("keep", "system")

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied: dict | None = None


def host_malloc_choice() -> str:
    """The ``JAXBERT_HOST_MALLOC`` setting (``keep`` when unset); a clear error for anything else."""
    return env_choice(HOST_MALLOC_ENV, HOST_MALLOC_CHOICES)


def _jax_backend_started() -> bool:
    """Whether jax has created its backends (and with them XLA's threads) in this process."""
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
    "late": bool}``. ``late`` is True when jax's CPU backend already existed at the first call:
    computations then keep running on XLA's threads, whose large blocks are still mapped afresh.
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
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    failed = [param for param, value in settings if libc.mallopt(param, value) != 1]
    if failed:
        raise OSError(f"mallopt refused parameter(s) {failed} (glibc {platform.libc_ver()[1]})")
    import jax
    jax.config.update("jax_cpu_enable_async_dispatch", False)  # read when the CPU backend is made
    _applied = {"host_malloc": "keep", "late": late}
    return dict(_applied)
