"""XLA compiler options of jaxbert's jitted functions: on CPU, which library runs the matmuls.

XLA:CPU (jaxlib 0.10) hands every dot to YNNPACK by default (``__ynn_fusion``). On the 2-core
machine this project is measured on, Eigen's GEMMs run the encoders' dots faster, forward and
backward. With the dots on Eigen (YNNPACK keeps the reduction fusions it makes, e.g. the bias
gradients), measured in one process, variants alternating:

* train step (``benchmarks/finetune_step.py``'s step, batch 32 x 128): BERT-base 23.8 s instead
  of 27.2 s (median of 4 steps), MiniLM 3.71 s instead of 3.94 s (8 steps); with no YNNPACK
  fusion at all 24.5 s and 3.77 s;
* forward (classifier logits): MiniLM ``[64, 128]`` 1.98 s vs 2.21 s, ``[64, 256]`` 3.85 s vs
  4.56 s; BERT-base ``[32, 128]`` 5.91 s vs 6.61 s.

Eigen is also the library that runs the weight gradients of the dense layers' hand-written
backward (:mod:`jaxbert.models.layers.dense_matmul`).

The options are passed per jitted function (``jax.jit(..., compiler_options=...)``), never
through the process-wide ``XLA_FLAGS``, and only when the function runs on CPU devices. They
change which kernels compute a product, not what is computed: results agree with XLA's default
to float32 rounding (logits 1e-7 apart above).

``JAXBERT_CPU_DOTS`` selects: ``eigen`` (the default) or ``xla`` (no option passed: XLA's own
default, or whatever ``XLA_FLAGS`` says). It is read when a function is jitted (an encoder's
forward is jitted once per model and pooling, a Trainer's steps when it is built), e.g. per
process for an A/B run: ``python benchmarks/finetune_step.py --frameworks jaxbert
--jax-variant eigen= --jax-variant xla=JAXBERT_CPU_DOTS=xla``.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
from jax.sharding import Mesh

from jaxbert.env_choice import env_choice

CPU_DOTS_ENV = "JAXBERT_CPU_DOTS"
CPU_DOTS_CHOICES = ("eigen", "xla")

# YNNPACK keeps only its reduction fusions; dots fall back to XLA:CPU's Eigen GEMMs.
_EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def cpu_dots_choice() -> str:
    """The ``JAXBERT_CPU_DOTS`` setting (``eigen`` when unset); a clear error for anything else."""
    return env_choice(CPU_DOTS_ENV, CPU_DOTS_CHOICES)


def compiler_options(devices: Mesh | Iterable[jax.Device] | None = None) -> dict[str, Any] | None:
    """``compiler_options`` for ``jax.jit`` of a function that runs on ``devices``.

    ``devices``: a ``jax.sharding.Mesh``, an iterable of devices, or ``None`` (the default
    backend's devices). Returns ``None`` (XLA's defaults) unless every device is a CPU and
    ``JAXBERT_CPU_DOTS`` is ``eigen`` (the default).
    """
    choice = cpu_dots_choice()
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, Mesh):
        devices = devices.devices.flat
    devices = list(devices)
    if choice == "xla" or not devices or any(d.platform != "cpu" for d in devices):
        return None
    return dict(_EIGEN_DOTS)
