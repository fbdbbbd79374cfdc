"""HFT: Half Fine-Tuning (Hui et al. 2024, arXiv 2404.18466; ACL 2025).

In each stage half of the parameters are frozen and the other half are updated; the half is
chosen at the *category level inside every transformer layer*, afresh (at random) at every stage
boundary. The paper's rule for LLaMA-2 blocks:

* **self-attention**: of the four matrices ``W_Q, W_K, W_V, W_O``, two (chosen at random) are
  updated and two are frozen;
* **feed-forward**: LLaMA has three matrices ``W_gate, W_up, W_down``; half of the layers
  (chosen at random) update two of them and the other half update one, so that half of the
  FFN matrices train overall.

jaxbert applies the rule per category of each BERT block, with a category's *members* being its
weight matrices (a member's kernel and bias are selected together):

* attention: ``query, key, value, out`` -> 2 of 4 per layer;
* feed-forward: ``wi, wo`` -> 1 of 2 per layer (an even count needs no alternation; with an odd
  count ``n`` a random half of the layers update ``ceil(n/2)`` and the rest ``floor(n/2)``, the
  paper's rule for three matrices);
* normalisation: ``attention_norm, mlp_norm`` -> 1 of 2 per layer (our reading for norms:
  the same half-of-the-members rule);
* any other parameter group inside a layer: each leaf is a member, half of them train.

Outside the blocks the paper's rule does not say what to do for an encoder's embedding module;
``embeddings`` chooses: ``'half'`` (default: one more category, 2 of its 4 members -- word,
position, token-type tables, LayerNorm -- train per stage), ``'frozen'`` (never trained) or
``'train'`` (always trained). In MiniLM the word-embedding table is half of all parameters, so
with ``'half'`` the trained fraction of the whole model swings between stages (about 12% or 62%)
while every category is exactly halved. Leaves matching ``always_train`` (default: the task head
and the pooler, which sits on the head's path) train in every stage.

**Stages.** ``stage='epoch'``: a boundary every epoch (``steps_per_epoch`` from the loop);
``stage='steps'``: every ``stage_steps`` optimizer steps. Stage ``k`` uses the selection drawn
from ``fold_in(key(seed), k)``; it is deterministic given the seed and does not depend on
anything else.

**The mask is data.** :func:`hft_transform` wraps the optimizer; its state holds the step count
and the current mask (a pytree of 0/1 float32 scalars, one per leaf). ``update`` computes the
stage from the count and the mask for that stage *inside* the jitted step, so a boundary changes
data only: no recompile, no host round trip, and a resumed run picks up the right stage from the
checkpointed count. (Computing the mask in the step rather than swapping it from the host keeps
preemption/resume exact for free.) Frozen leaves behave as ``requires_grad=False`` in PyTorch:
their gradients are zeroed before the inner optimizer (so they count for neither the clipping
norm nor Adam's moments), their updates are zero, and their optimizer state (Adam ``mu``/``nu``)
is held unchanged until they train again. Optax keeps one step count for bias correction, which
keeps advancing (PyTorch keeps one per parameter).

Note: the step still computes every gradient (the mask multiplies them), so HFT here saves no
compute or memory; the paper's ~30% time saving comes from not computing frozen gradients.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbert.models.params import dict_key_suffix, join_keys, split_path
from jaxbert.peft.base import PeftError, PeftMethod, flatten, unflatten

STAGES = ("epoch", "steps")
_LAYER = re.compile(r"(?:^|/)layer_(\d+)/(.*)$")


def _category(path: str) -> tuple[str, str] | None:
    """``(group, member)`` of a leaf, or None (outside every category)."""
    m = _LAYER.search(path)
    if m:
        layer, rest = m.group(1), split_path(m.group(2))
        head = rest[0]
        if head == "attention":
            return f"layer_{layer}/attention", rest[1] if len(rest) > 2 else head
        if head == "mlp":
            return f"layer_{layer}/mlp", rest[1] if len(rest) > 2 else head
        if head.endswith("norm"):
            return f"layer_{layer}/norm", head
        return f"layer_{layer}/other", join_keys(rest)
    m = re.search(r"(?:^|/)embeddings/([^/]+)/", path)
    if m:
        return "embeddings", m.group(1)
    return None


def categories(paths, always_train: str | None) -> tuple[dict[str, list[str]], dict[str, tuple[str, str]]]:
    """``({group: [members...]}, {path: (group, member)})`` over ``paths`` (always-trained excluded)."""
    rx = re.compile(always_train) if always_train else None
    groups: dict[str, list[str]] = {}
    where: dict[str, tuple[str, str]] = {}
    for p in paths:
        if rx is not None and rx.search(p):
            continue
        c = _category(p)
        if c is None:
            continue
        g, mem = c
        if mem not in groups.setdefault(g, []):
            groups[g].append(mem)
        where[p] = c
    return groups, where


def _kind(group: str) -> str:
    return group.split("/", 1)[1] if "/" in group else group


def selection(groups: dict[str, list[str]], stage: jax.Array | int, seed: int) -> dict[str, jax.Array]:
    """``{group: bool[n_members]}`` chosen for ``stage`` (traceable in ``stage``).

    A group with an even number ``n`` of members selects ``n / 2``; with odd ``n``, a random half of
    the groups of that kind (one per layer) select ``ceil(n/2)`` and the others ``floor(n/2)``.
    """
    key = jax.random.fold_in(jax.random.key(seed), stage)
    kinds = sorted({_kind(g) for g in groups})
    out = {}
    for kind in kinds:
        gs = sorted(g for g in groups if _kind(g) == kind)
        kkey = jax.random.fold_in(key, zlib.crc32(kind.encode()) & 0x7FFFFFFF)  # stable per category kind
        # Which groups of this kind round up (only matters for odd member counts).
        order = jnp.argsort(jax.random.permutation(jax.random.fold_in(kkey, 10_000), len(gs)))
        for gi, g in enumerate(gs):
            n = len(groups[g])
            k = jnp.where(order[gi] < math.ceil(len(gs) / 2), math.ceil(n / 2), n // 2)
            pos = jnp.argsort(jax.random.permutation(jax.random.fold_in(kkey, gi), n))
            out[g] = pos < k
    return out


EMBEDDINGS = ("half", "frozen", "train")


def hft_mask(params: Any, stage: jax.Array | int, seed: int, always_train: str | None,
             embeddings: str = "half") -> Any:
    """Pytree of float32 0/1 scalars (structure of ``params``): 1 = updated in ``stage``."""
    flat = flatten(params)
    groups, where = categories(flat, always_train)
    if embeddings != "half":
        groups.pop("embeddings", None)
    sel = selection(groups, stage, seed)
    out = {}
    for p in flat:
        if p in where and where[p][0] == "embeddings" and embeddings != "half":
            out[p] = jnp.asarray(float(embeddings == "train"), jnp.float32)
        elif p in where:
            g, mem = where[p]
            out[p] = sel[g][groups[g].index(mem)].astype(jnp.float32)
        else:
            out[p] = jnp.ones((), jnp.float32)
    return unflatten(out)


class HftState(NamedTuple):
    count: jax.Array  # int32: optimizer steps taken
    mask: Any  # pytree of 0/1 float32 scalars: the selection of the current stage
    inner: Any  # the wrapped optimizer's state


def _hold_frozen(old: Any, new: Any, mask: Any) -> Any:
    """Keep ``old`` for state leaves that belong to a frozen parameter (matched by trailing dict keys)."""
    by_path = {split_path(p): m for p, m in flatten(mask).items()}
    depth = max((len(k) for k in by_path), default=0)

    def one(path, o, n):
        keys = dict_key_suffix(path)
        for d in range(min(depth, len(keys)), 0, -1):
            m = by_path.get(keys[-d:])
            if m is not None:
                return jnp.where(m > 0, n, o)
        return n

    return jax.tree_util.tree_map_with_path(one, old, new)


def hft_transform(inner: optax.GradientTransformation, mask_fn, stage_steps: int) -> optax.GradientTransformation:
    """Wrap ``inner``: in stage ``count // stage_steps`` only leaves where ``mask_fn(stage, tree)`` is 1 train.

    ``mask_fn(stage, tree)`` returns 0/1 scalars with the structure of ``tree`` (params or grads).
    """
    if stage_steps <= 0:
        raise PeftError(f"HFT stage length must be >= 1 step, got {stage_steps}")

    def init(params):
        return HftState(count=jnp.zeros((), jnp.int32), mask=mask_fn(0, params), inner=inner.init(params))

    def update(grads, state, params=None):
        mask = mask_fn(state.count // stage_steps, grads)
        grads = jax.tree.map(lambda g, m: g * m.astype(g.dtype), grads, mask)
        updates, new_inner = inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, mask)
        new_inner = _hold_frozen(state.inner, new_inner, mask)
        return updates, HftState(count=state.count + 1, mask=mask, inner=new_inner)

    return optax.GradientTransformation(init, update)


class HFT(PeftMethod):
    """Half fine-tuning; options ``stage`` ('epoch' | 'steps'), ``stage_steps``, ``always_train``, ``embeddings``."""

    name = "hft"
    section = "hft"
    DEFAULTS = {"stage": "epoch", "stage_steps": 0, "always_train": r"^(classifier|qa_head|encoder/pooler)/",
                "embeddings": "half"}
    default_learning_rate = 1e-4

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise PeftError(f"peft.hft.stage={self.stage!r}; expected one of {STAGES}")
        if self.embeddings not in EMBEDDINGS:
            raise PeftError(f"peft.hft.embeddings={self.embeddings!r}; expected one of {EMBEDDINGS}")
        if self.stage == "steps" and (not isinstance(self.stage_steps, int) or self.stage_steps <= 0):
            raise PeftError(f"peft.hft.stage='steps' needs peft.hft.stage_steps >= 1, got {self.stage_steps!r}")
        self.seed = 0

    def labels(self, params):
        return None  # all leaves go through the optimizer; the stage mask does the freezing

    def is_trainable(self, path: str) -> bool:
        return True

    def mask(self, params: Any, stage: int, seed: int | None = None) -> Any:
        return hft_mask(params, stage, self.seed if seed is None else seed, self.always_train, self.embeddings)

    def trainable_paths(self, params):
        flat = flatten(self.mask(params, 0))
        return [p for p, m in flat.items() if float(m) > 0]

    def stage_length(self, steps_per_epoch: int) -> int:
        return int(self.stage_steps) if self.stage == "steps" else max(1, int(steps_per_epoch))

    def wrap_optimizer(self, tx, *, total_steps, steps_per_epoch, seed):
        self.seed = int(seed)
        return hft_transform(tx, lambda stage, tree: hft_mask(tree, stage, self.seed, self.always_train,
                                                              self.embeddings),
                             self.stage_length(steps_per_epoch))
