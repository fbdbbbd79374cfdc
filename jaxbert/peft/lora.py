"""LoRA (Hu et al. 2021, arXiv 2106.09685) as a function on the param tree: ``W' = W + scale * A @ B``.

Conventions (huggingface/peft ``LoraLayer``), translated to jaxbert's ``[in, out]`` kernels:

* peft stores ``lora_A.weight [r, in]`` and ``lora_B.weight [out, r]`` and adds
  ``scale * B @ A`` to the torch weight ``[out, in]``. jaxbert stores their transposes,
  ``lora_a [in, r]`` and ``lora_b [r, out]``, next to the target kernel
  (``encoder/layer_0/attention/query/lora_a``) and adds ``scale * lora_a @ lora_b`` to the kernel:
  the same update, so ``lora_a = lora_A.weight.T`` and ``lora_b = lora_B.weight.T``.
* Init: ``lora_A`` kaiming-uniform with ``a = sqrt(5)`` (``U(-1/sqrt(in), 1/sqrt(in))``),
  ``lora_B`` zeros, so the model starts exactly at the base model.
* ``scale = alpha / rank``, or ``alpha / sqrt(rank)`` with ``rslora=True`` (Kalajdzievski 2023).
* **Multi-dimensional kernels** are treated as ``[in, out]`` matrices by flattening: the q/k/v
  kernels ``[embed, heads, head_dim]`` as ``[embed, heads * head_dim]``, the attention output
  kernel ``[heads, head_dim, embed]`` as ``[heads * head_dim, embed]`` (its first two axes are
  contracted, see :data:`FAN_IN_DIMS`), dense kernels ``[in, out]`` as they are. ``rank`` must be
  ``<= min(in, out)`` of that matrix.
* ``dropout``: peft drops the *input* of the LoRA branch per token (``B(A(dropout(x)))``), which a
  weight-space update cannot express. Here dropout is applied to the rows of ``lora_a`` (the input
  features of the branch), one mask per step for the whole batch, scaled by ``1/(1-p)``: the same
  expected update, coarser noise. It is off by default (as in peft).

The model code never sees LoRA: :meth:`LoRA.materialize` runs inside the jitted step before
``model.apply``; :func:`merge` / :func:`unmerge` fold the update into (out of) the kernels, and a
merged export loads in ``transformers`` as a plain BERT.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import jax.numpy as jnp

from jaxbert.models.params import join_keys, parent_path, split_path
from jaxbert.peft.base import PeftError, PeftMethod, flatten, match_paths, shape_of, unflatten

#: Leading kernel axes contracted with the input, by path regex (default 1).
FAN_IN_DIMS: tuple[tuple[str, int], ...] = ((r"attention/out/kernel$", 2),)

DEFAULT_TARGETS = r"encoder/layer_\d+/attention/(query|value)/kernel$"


def fan_in_dims(path: str) -> int:
    for rx, n in FAN_IN_DIMS:
        if re.search(rx, path):
            return n
    return 1


def matrix_shape(path: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``[in, out]`` matrix view of a kernel of ``shape`` at ``path``."""
    n = fan_in_dims(path)
    if len(shape) <= n:
        raise PeftError(f"{path} of shape {shape} is not a matrix with {n} input axes")
    return math.prod(shape[:n]), math.prod(shape[n:])


def module_of(path: str) -> str:
    """The module path of a kernel path (``encoder/layer_0/attention/query``)."""
    return parent_path(path)


def lora_delta(a: jax.Array, b: jax.Array, scale: float, shape: tuple[int, ...]) -> jax.Array:
    """``scale * a @ b`` reshaped to the kernel's shape (float32)."""
    return (scale * jnp.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))).reshape(shape)


def kaiming_uniform_a(rng: jax.Array, fan_in: int, rank: int, dtype=jnp.float32) -> jax.Array:
    """peft's ``nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5))`` as ``[in, r]``."""
    bound = 1.0 / math.sqrt(fan_in)  # gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in)
    return jax.random.uniform(rng, (fan_in, rank), dtype, -bound, bound)


class LoRA(PeftMethod):
    """Low-rank updates on the kernels matched by ``targets`` (a regex over param paths).

    Options: ``targets`` (default: attention query and value kernels), ``rank`` (8), ``alpha`` (16),
    ``dropout`` (0.0), ``rslora`` (False). Trainable: every ``lora_a`` / ``lora_b`` and the head.
    """

    name = "lora"
    section = "lora"
    DEFAULTS = {"targets": DEFAULT_TARGETS, "rank": 8, "alpha": 16.0, "dropout": 0.0, "rslora": False}
    default_learning_rate = 1e-3
    extra_leaf_names = ("lora_a", "lora_b")

    def validate(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise PeftError(f"peft.{self.section}.rank must be a positive int, got {self.rank!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise PeftError(f"peft.{self.section}.dropout must be in [0, 1), got {self.dropout}")
        if float(self.alpha) <= 0:
            raise PeftError(f"peft.{self.section}.alpha must be > 0, got {self.alpha}")

    @property
    def scale(self) -> float:
        return float(self.alpha) / (math.sqrt(self.rank) if self.rslora else self.rank)

    def targets_of(self, flat: dict[str, Any]) -> list[str]:
        """Base kernels matched by ``targets``, validated (error names the paths / shapes)."""
        hits = [p for p in match_paths({p: v for p, v in flat.items() if not self.is_peft_path(p)},
                                       self.targets, f"peft.{self.section}.targets", min_ndim=2)]
        bad = [p for p in hits if split_path(p)[-1] not in ("kernel", "embedding")]
        if bad:
            raise PeftError(f"peft.{self.section}.targets={self.targets!r} matches {bad[0]}; it must select "
                            "weight matrices (leaves named 'kernel' or 'embedding'), e.g. "
                            "'attention/(query|value)/kernel$'")
        for p in hits:
            fin, fout = matrix_shape(p, shape_of(flat[p]))
            if self.rank > min(fin, fout):
                raise PeftError(f"peft.{self.section}.rank={self.rank} is larger than the matrix {p} "
                                f"(shape {shape_of(flat[p])}, as [in, out] = [{fin}, {fout}]); "
                                f"use rank <= {min(fin, fout)}")
        return hits

    def init(self, rng, params):
        flat = flatten(params)
        for i, p in enumerate(sorted(self.targets_of(flat))):
            fin, fout = matrix_shape(p, shape_of(flat[p]))
            m = module_of(p)
            flat[join_keys((m, "lora_a"))] = kaiming_uniform_a(jax.random.fold_in(rng, i), fin, self.rank)
            flat[join_keys((m, "lora_b"))] = jnp.zeros((self.rank, fout), jnp.float32)
        return unflatten(flat)

    @staticmethod
    def target_of(flat: dict[str, Any], module: str) -> str:
        for leaf in ("kernel", "embedding"):
            if join_keys((module, leaf)) in flat:
                return join_keys((module, leaf))
        raise PeftError(f"LoRA leaves at {module}/ have no kernel or embedding next to them")

    def apply_lora(self, flat: dict[str, Any], rng=None, deterministic: bool = True) -> dict[str, Any]:
        """``flat`` with ``W + scale * A @ B`` on every LoRA target (LoRA leaves kept)."""
        out = dict(flat)
        for i, path in enumerate(sorted(p for p in flat if p.endswith("/lora_a"))):
            m = module_of(path)
            w_path = self.target_of(flat, m)
            a, b = flat[path], flat[join_keys((m, "lora_b"))]
            if not deterministic and self.dropout > 0 and rng is not None:
                keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1.0 - self.dropout, (a.shape[0], 1))
                a = jnp.where(keep, a / (1.0 - self.dropout), 0.0)
            w = out[w_path]
            out[w_path] = (w.astype(jnp.float32) + lora_delta(a, b, self.scale, w.shape)).astype(w.dtype)
        return out

    def materialize(self, params, rng=None, deterministic=True):
        return unflatten(self.apply_lora(flatten(params), rng, deterministic))


def merge(params: Any, method: LoRA) -> Any:
    """Plain params with every LoRA update folded into its kernel (LoRA leaves dropped)."""
    return method.merge(params)


def unmerge(merged: Any, lora_params: Any, method: LoRA) -> Any:
    """Inverse of :func:`merge`: subtract ``scale * A @ B`` from the merged kernels.

    ``lora_params`` is any tree holding the ``lora_a`` / ``lora_b`` leaves (e.g. the unmerged
    params). Returns the unmerged params (base kernels + the LoRA leaves).
    """
    flat, lf = flatten(merged), flatten(lora_params)
    out = dict(flat)
    for path in (p for p in lf if p.endswith("/lora_a")):
        m = module_of(path)
        w_path, b_path = LoRA.target_of(flat, m), join_keys((m, "lora_b"))
        w = flat[w_path]
        out[w_path] = (w.astype(jnp.float32) - lora_delta(lf[path], lf[b_path], method.scale, w.shape)).astype(w.dtype)
        out[path], out[b_path] = lf[path], lf[b_path]
    return unflatten(out)
