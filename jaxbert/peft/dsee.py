"""DSEE (Chen et al. 2021, "DSEE: Dually Sparsity-embedded Efficient Tuning of Pre-trained Language
Models", arXiv 2111.00160): LoRA plus a sparse update, and magnitude pruning of the final weights.

**Parameter-efficient half.** On every target matrix (LoRA's ``targets``, viewed as ``[in, out]``)::

    W' = W + scale * A @ B + dS,     dS = scatter(dsee_values [N] at dsee_index [N, 2])

``dS`` has exactly ``N = num_sparse`` entries per matrix on a fixed support chosen at init:

* ``support='magnitude'``: the ``N`` largest ``|W|``;
* ``support='random'``: ``N`` distinct positions drawn uniformly (the run's seed);
* ``support='decomposition'``: from a low-rank + sparse decomposition ``W ~ L + S`` of the
  pretrained weight, the support of ``S``. DSEE uses GreBsmo; we use the simpler GoDec-style
  alternating projections (Zhou & Tao 2011): ``S = 0``; repeat ``decomposition_iters`` times
  ``L = best rank-r approximation of (W - S)`` (truncated SVD, ``r = decomposition_rank``),
  ``S = the N largest-magnitude entries of (W - L)`` (all others zero); the support is that of
  the final ``S`` -- the entries a rank-r model of ``W`` explains worst.

``dsee_values`` start at zero (so the model starts at the base model) and train with LoRA's ``A``
and ``B``; ``dsee_index`` holds (row, column) of the ``[in, out]`` view as float32 (exact below
2**24; a float leaf so that the step's ``jax.grad`` over all params accepts it) and is frozen.

**Resource-efficient half.** With ``prune_sparsity = s > 0``, every matrix matched by
``prune_targets`` (default: all q/k/v/out/FFN kernels of the encoder) carries a frozen 0/1
``prune_mask`` of its shape, applied in :meth:`DSEE.materialize` (``W' * mask``). All ones until
step ``round(prune_at * total_steps)``, where the loop calls the hook from :meth:`DSEE.step_hooks`:
the mask is recomputed by magnitude of the *merged* weight ``|W + scale A B + dS|`` so that
exactly ``round(s * size)`` entries per matrix are zero, and then held for the rest of training
(the adapters keep training under it). ``prune_at=0`` prunes the pretrained weights at init.
A merged export carries the zeros, so the exported model has the target sparsity.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbert.models.params import join_keys
from jaxbert.peft.base import PeftError, flatten, match_paths, shape_of, unflatten
from jaxbert.peft.lora import DEFAULT_TARGETS, LoRA, matrix_shape, module_of

SUPPORTS = ("magnitude", "random", "decomposition")
DEFAULT_PRUNE_TARGETS = r"encoder/layer_\d+/(attention/(query|key|value|out)|mlp/(wi|wo))/kernel$"


def top_n_flat(x: jax.Array, n: int) -> jax.Array:
    """Flat indices of the ``n`` largest entries of ``x`` (ties by position)."""
    return jax.lax.top_k(x.reshape(-1), n)[1]


def godec_support(w: jax.Array, rank: int, n: int, iters: int) -> jax.Array:
    """Flat indices of the sparse part of a GoDec-style low-rank + sparse split of ``w [in, out]``."""
    w = w.astype(jnp.float32)
    s = jnp.zeros_like(w)
    idx = top_n_flat(jnp.abs(w), n)
    for _ in range(max(1, iters)):
        u, sig, vt = jnp.linalg.svd(w - s, full_matrices=False)
        low = (u[:, :rank] * sig[:rank]) @ vt[:rank]
        r = w - low
        idx = top_n_flat(jnp.abs(r), n)
        s = jnp.zeros(w.size, w.dtype).at[idx].set(r.reshape(-1)[idx]).reshape(w.shape)
    return idx


def sparse_delta(values: jax.Array, index: jax.Array, shape2d: tuple[int, int]) -> jax.Array:
    """Dense ``[in, out]`` matrix with ``values`` at ``index`` (rows, cols as float) and zeros elsewhere."""
    rows, cols = index[:, 0].astype(jnp.int32), index[:, 1].astype(jnp.int32)
    return jnp.zeros(shape2d, jnp.float32).at[rows, cols].add(values.astype(jnp.float32))


def magnitude_mask(w: jax.Array, sparsity: float) -> jax.Array:
    """0/1 mask of ``w``'s shape with exactly ``round(sparsity * size)`` zeros at the smallest ``|w|``."""
    k = int(round(sparsity * w.size))
    order = jnp.argsort(jnp.abs(w.astype(jnp.float32)).reshape(-1))
    return jnp.ones(w.size, w.dtype).at[order[:k]].set(0).reshape(w.shape)


class DSEE(LoRA):
    """LoRA + a fixed-support sparse update per target matrix (+ optional magnitude pruning)."""

    name = "dsee"
    section = "dsee"
    DEFAULTS = {"targets": DEFAULT_TARGETS, "rank": 8, "alpha": 16.0, "dropout": 0.0, "rslora": False,
                "num_sparse": 64, "support": "magnitude", "decomposition_rank": 8, "decomposition_iters": 3,
                "prune_sparsity": 0.0, "prune_at": 0.5, "prune_targets": DEFAULT_PRUNE_TARGETS}
    default_learning_rate = 1e-3
    extra_leaf_names = ("lora_a", "lora_b", "dsee_values", "dsee_index", "prune_mask")

    def validate(self) -> None:
        super().validate()
        if isinstance(self.num_sparse, bool) or not isinstance(self.num_sparse, int) or self.num_sparse <= 0:
            raise PeftError(f"peft.dsee.num_sparse must be a positive int, got {self.num_sparse!r}")
        if self.support not in SUPPORTS:
            raise PeftError(f"peft.dsee.support={self.support!r}; expected one of {SUPPORTS}")
        if not 0.0 <= float(self.prune_sparsity) < 1.0:
            raise PeftError(f"peft.dsee.prune_sparsity must be in [0, 1), got {self.prune_sparsity}")
        if not 0.0 <= float(self.prune_at) <= 1.0:
            raise PeftError(f"peft.dsee.prune_at must be a fraction of training in [0, 1], got {self.prune_at}")

    def is_trainable(self, path: str) -> bool:
        if path.endswith(("/dsee_index", "/prune_mask")):
            return False
        return super().is_trainable(path)

    def init(self, rng, params):
        flat = flatten(LoRA.init(self, rng, params))
        for i, p in enumerate(sorted(self.targets_of(flat))):
            fin, fout = matrix_shape(p, shape_of(flat[p]))
            if self.num_sparse > fin * fout:
                raise PeftError(f"peft.dsee.num_sparse={self.num_sparse} exceeds the {fin * fout} entries of {p}")
            if max(fin, fout) >= 2 ** 24:
                raise PeftError(f"{p}: matrix dimension {max(fin, fout)} too large for float32 indices")
            w = flat[p].reshape(fin, fout)
            key = jax.random.fold_in(jax.random.fold_in(rng, 0xD5EE), i)
            if self.support == "magnitude":
                idx = top_n_flat(jnp.abs(w.astype(jnp.float32)), self.num_sparse)
            elif self.support == "random":
                idx = jax.random.choice(key, fin * fout, (self.num_sparse,), replace=False)
            else:
                idx = godec_support(w, min(self.decomposition_rank, fin, fout), self.num_sparse,
                                    self.decomposition_iters)
            idx = jnp.sort(idx)
            m = module_of(p)
            flat[join_keys((m, "dsee_index"))] = jnp.stack([idx // fout, idx % fout], axis=1).astype(jnp.float32)
            flat[join_keys((m, "dsee_values"))] = jnp.zeros((self.num_sparse,), jnp.float32)
        if self.prune_sparsity > 0:
            base = {p: v for p, v in flat.items() if not self.is_peft_path(p)}
            for p in match_paths(base, self.prune_targets, "peft.dsee.prune_targets", min_ndim=2):
                flat[join_keys((module_of(p), "prune_mask"))] = jnp.ones(shape_of(flat[p]), flat[p].dtype)
            if self.prune_at == 0:
                flat = self._prune(flat)
        return unflatten(flat)

    def _dense(self, flat: dict[str, Any], rng=None, deterministic=True) -> dict[str, Any]:
        """LoRA and the sparse update applied (no mask)."""
        out = self.apply_lora(flat, rng, deterministic)
        for path in (p for p in flat if p.endswith("/dsee_values")):
            m = module_of(path)
            w_path = self.target_of(flat, m)
            w = out[w_path]
            shape2d = matrix_shape(w_path, w.shape)
            ds = sparse_delta(flat[path], flat[join_keys((m, "dsee_index"))], shape2d).reshape(w.shape)
            out[w_path] = (w.astype(jnp.float32) + ds).astype(w.dtype)
        return out

    def materialize(self, params, rng=None, deterministic=True):
        flat = flatten(params)
        out = self._dense(flat, rng, deterministic)
        for path in (p for p in flat if p.endswith("/prune_mask")):
            w_path = self.target_of(flat, module_of(path))
            out[w_path] = out[w_path] * flat[path].astype(out[w_path].dtype)
        return unflatten(out)

    def _prune(self, flat: dict[str, Any]) -> dict[str, Any]:
        dense = self._dense(flat)
        out = dict(flat)
        for path in (p for p in flat if p.endswith("/prune_mask")):
            w_path = self.target_of(flat, module_of(path))
            out[path] = magnitude_mask(dense[w_path], float(self.prune_sparsity)).astype(flat[path].dtype)
        return out

    def prune(self, params):
        """Params with every ``prune_mask`` recomputed from the merged weights' magnitudes."""
        return unflatten(self._prune(flatten(params)))

    def prune_step(self, total_steps: int) -> int | None:
        if self.prune_sparsity <= 0 or self.prune_at == 0:
            return None
        return max(1, int(round(self.prune_at * total_steps)))

    def step_hooks(self, total_steps):
        step = self.prune_step(total_steps)
        return {} if step is None else {step: self.prune}
