"""Model soups (Wortsman et al. 2022, arXiv 2203.05482; KaLM-Embedding-V2's final stage): average the
parameters of several fine-tuned checkpoints of one model.

Functions on param trees, usable for any jaxbert model (BERT, the configurable encoder, LLMs,
PEFT trees with LoRA leaves)::

    souped = soup([params_a, params_b, params_c])                  # uniform
    souped = soup([params_a, params_b], weights=[0.7, 0.3])        # weighted (normalised to sum 1)
    souped, chosen = greedy_soup(candidates, evaluate)             # greedy soup (higher = better)

Averages are computed in float32 and cast back to each leaf's dtype. Trees must have the same
structure, shapes and dtypes; otherwise :class:`SoupError` names the first differing path.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxbert.models.params import join_keys


class SoupError(ValueError):
    """Ingredients that cannot be averaged (different structure, shape or dtype; bad weights)."""


def _flat(tree: Any) -> dict[str, Any]:
    if not isinstance(tree, dict):
        raise SoupError(f"soup ingredients must be nested param dicts, got {type(tree).__name__}")
    return {join_keys(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def check_compatible(trees: Sequence[Any]) -> None:
    """Raise :class:`SoupError` unless all trees have the same paths, shapes and dtypes."""
    if len(trees) < 1:
        raise SoupError("soup needs at least one set of params")
    ref = _flat(trees[0])
    for n, tree in enumerate(trees[1:], start=1):
        flat = _flat(tree)
        if set(flat) != set(ref):
            missing = sorted(set(ref) - set(flat))[:5]
            extra = sorted(set(flat) - set(ref))[:5]
            raise SoupError(f"ingredient {n} has a different param structure than ingredient 0: "
                            f"missing {missing}, extra {extra}")
        for path, v in flat.items():
            r = ref[path]
            if tuple(np.shape(v)) != tuple(np.shape(r)):
                raise SoupError(f"ingredient {n}: {path} has shape {tuple(np.shape(v))}, ingredient 0 has "
                                f"{tuple(np.shape(r))}")
            if jnp.result_type(v) != jnp.result_type(r):
                raise SoupError(f"ingredient {n}: {path} has dtype {jnp.result_type(v)}, ingredient 0 has "
                                f"{jnp.result_type(r)}")


def soup(trees: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
    """Weighted average of param trees (uniform when ``weights`` is None; weights normalised to sum 1)."""
    trees = list(trees)
    check_compatible(trees)
    if weights is None:
        w = np.full(len(trees), 1.0 / len(trees))
    else:
        w = np.asarray(weights, np.float64)
        if w.shape != (len(trees),):
            raise SoupError(f"{w.size} weights for {len(trees)} ingredients")
        if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise SoupError(f"soup weights must be finite, >= 0 and not all 0, got {list(w)}")
        w = w / w.sum()

    def avg(*leaves):
        acc = sum(float(wi) * jnp.asarray(x, jnp.float32) for wi, x in zip(w, leaves))
        return acc.astype(jnp.result_type(leaves[0]))

    return jax.tree.map(avg, *trees)


def greedy_soup(candidates: Sequence[Any], evaluate: Callable[[Any], float]) -> tuple[Any, list[int]]:
    """Greedy soup: sort candidates by their own score, then add each one if the uniform soup of the
    chosen set does not get worse. Returns ``(params, indices of the chosen candidates)``."""
    candidates = list(candidates)
    check_compatible(candidates)
    scores = [float(evaluate(c)) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    chosen = [order[0]]
    best = scores[order[0]]
    for i in order[1:]:
        trial = soup([candidates[j] for j in chosen + [i]])
        s = float(evaluate(trial))
        if s >= best:
            chosen.append(i)
            best = s
    return soup([candidates[j] for j in chosen]), chosen
