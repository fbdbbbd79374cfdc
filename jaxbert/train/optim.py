"""Optimizers from config: optax transforms built from an ``ml_collections`` ``optim`` section.

Everything here is a pure function of ``(config, params)``; the model code does not know about it.

* **Paths and labels.** Every parameter leaf has a ``'/'``-joined path (``encoder/layer_3/mlp/wi/kernel``).
  Regex rules over those paths give each leaf a *label*; labels drive ``optax.partition``
  (a.k.a. ``multi_transform``): one inner optimizer per distinct label.
* **Freezing** is the reserved label ``'frozen'``, mapped to ``optax.set_to_zero()``: frozen leaves get
  zero updates and **no optimizer state** (``partition`` masks them out of every other label's inner
  optimizer with ``optax.MaskedNode``), and they are left out of the global-norm gradient clipping.
* **Per-group learning rates** (regex groups, layer-wise LR decay) scale the schedule:
  a group with multiplier ``m`` gets its own inner optimizer with ``lambda step: m * schedule(step)``.
  Leaves are grouped by their final multiplier, so the number of inner optimizers is the number of
  distinct multipliers (+1 for frozen).
* **Weight decay** uses optax's ``mask`` argument; by default biases and normalisation parameters are
  not decayed, kernels and embedding tables are (the BERT / HF ``Trainer`` convention).

Typical use::

    cfg = default_optim_config()
    cfg.total_steps = 1000
    cfg.layerwise_lr_decay = 0.9
    tx, info = make_optimizer(cfg, params)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    info["schedule"](step)            # base learning rate at ``step`` (for logging)
    lr_multipliers(info)              # {'encoder/layer_0/...': 0.6561, ...}

PEFT and other methods that decide trainability themselves pass ``labels=`` (a pytree of str, or a
prefix of the params tree) to :func:`make_optimizer`; see :func:`freeze_mask_to_labels`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from jaxbert.models.params import param_paths, path_str  # noqa: F401  (re-exported: optim.path_str)

PyTree = Any

#: Reserved label: leaves with this label get zero updates and no optimizer state.
FROZEN = "frozen"

OPTIMIZERS: tuple[str, ...] = ("adamw", "lamb", "adafactor", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine", "warmup_stable_decay")
SCHEDULE_ALIASES: dict[str, str] = {"wsd": "warmup_stable_decay"}
WSD_DECAY_SHAPES: tuple[str, ...] = ("linear", "cosine", "sqrt")

#: Not decayed: leaves named ``bias`` or ``scale``, and every leaf whose parent module name contains
#: ``norm`` (``encoder/embeddings/norm/scale``, ``layer_0/attention_norm/bias``, ``final_norm/...``).
DEFAULT_NO_DECAY_REGEX = r"(^|/)(bias|scale)$|(^|/)[^/]*norm[^/]*/[^/]+$"
#: Parameters of the embedding block (word/position/token-type tables and their LayerNorm).
DEFAULT_EMBEDDINGS_REGEX = r"(^|/)embeddings/"
#: Parameters of encoder layer ``i``; must have a named group ``layer`` holding the index.
DEFAULT_LAYER_REGEX = r"(^|/)layer_(?P<layer>\d+)/"
#: The pooler (re-initialised together with the top layers by :func:`reinit_top_layers`).
DEFAULT_POOLER_REGEX = r"(^|/)pooler/"


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

def default_optim_config() -> ml_collections.ConfigDict:
    """All ``optim`` keys with their defaults (BERT fine-tuning recipe: AdamW + linear decay).

    Keys:
      name: one of :data:`OPTIMIZERS` (``'adamw'``).
      learning_rate: peak learning rate (``5e-5``).
      b1, b2, eps: Adam/LAMB moments and epsilon (``0.9, 0.999, 1e-8``: torch ``AdamW`` defaults;
        HF's original BERT used ``eps=1e-6``). Ignored by adafactor and sgd.
      weight_decay: decoupled, learning-rate-scaled weight decay (``0.01``), i.e.
        ``p -= lr * wd * p`` for adamw/lamb/adafactor and L2 (``g += wd * p``) for sgd. Applied only to
        leaves that ``no_decay_regex`` does not match.
      momentum: sgd momentum (``0.9``; ``0`` disables). nesterov: sgd Nesterov flag (``False``).
      grad_clip_norm: global-norm clipping over the trainable leaves, before the optimizer
        (``1.0`` like HF ``Trainer``/original BERT; ``0`` or ``None`` disables).
      schedule: one of :data:`SCHEDULES` or ``'wsd'`` (``'linear'``). Linear warmup from 0 always.
      warmup_steps: warmup length in steps (``None``: use ``warmup_ratio``); takes precedence.
      warmup_ratio: warmup as a fraction of ``total_steps`` (``0.06``, the RoBERTa GLUE recipe).
      total_steps: number of optimizer steps (``None``; required by all schedules but a constant
        one without ``warmup_ratio``).
      decay_ratio: WSD only: fraction of ``total_steps`` spent in the final decay (``0.1``).
      decay_shape: WSD only: ``'linear'``, ``'cosine'`` or ``'sqrt'`` (1-sqrt, Hägele et al. 2024).
      end_lr_factor: final LR as a fraction of the peak for linear/cosine/WSD (``0.0``).
      no_decay_regex: paths matching it get no weight decay (:data:`DEFAULT_NO_DECAY_REGEX`;
        ``''`` decays everything).
      groups: tuple of rules ``{'regex': r, 'lr_mult': m}`` or ``{'regex': r, 'frozen': True}``,
        first match wins (``()``). ``lr_mult == 0`` freezes. Every regex must match a parameter.
      freeze_embeddings: freeze every leaf matching ``embeddings_regex`` (``False``).
      freeze_lower_layers: freeze encoder layers ``0..k-1`` (``0``).
      layerwise_lr_decay: ``d`` in ``(0, 1]`` (``1.0`` = off). Layer ``i`` of ``L`` gets ``d**(L-i)``,
        the embeddings ``d**(L+1)``, everything else (pooler, heads) ``1``. Multiplies with group
        ``lr_mult``.
      embeddings_regex, layer_regex: how the embedding block and layer ``i`` are found
        (:data:`DEFAULT_EMBEDDINGS_REGEX`, :data:`DEFAULT_LAYER_REGEX`; the latter needs a named group
        ``layer``). ``L`` is ``1 + max(i)``.
    """
    c = ml_collections.ConfigDict()
    c.name = "adamw"
    c.learning_rate = 5e-5
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = 0.01
    c.momentum = 0.9
    c.nesterov = False
    c.grad_clip_norm = 1.0
    c.schedule = "linear"
    c.warmup_steps = config_dict.placeholder(int)
    c.warmup_ratio = 0.06
    c.total_steps = config_dict.placeholder(int)
    c.decay_ratio = 0.1
    c.decay_shape = "linear"
    c.end_lr_factor = 0.0
    c.no_decay_regex = DEFAULT_NO_DECAY_REGEX
    c.groups = ()
    c.freeze_embeddings = False
    c.freeze_lower_layers = 0
    c.layerwise_lr_decay = 1.0
    c.embeddings_regex = DEFAULT_EMBEDDINGS_REGEX
    c.layer_regex = DEFAULT_LAYER_REGEX
    return c


def resolve_optim_config(cfg: Mapping[str, Any] | ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
    """``default_optim_config()`` updated with ``cfg``; an unknown key is a ``ValueError`` listing the valid ones."""
    base = default_optim_config()
    if cfg is None:
        return base
    items = dict(cfg.items())
    unknown = sorted(set(items) - set(base.keys()))
    if unknown:
        raise ValueError(f"unknown optim config key(s) {unknown}; valid keys: {sorted(base.keys())}")
    for key, value in items.items():
        try:
            base[key] = value
        except TypeError as e:
            raise ValueError(f"optim.{key}={value!r}: {e}") from None
    return base


# ----------------------------------------------------------------------------------------------
# Paths and labels
# ----------------------------------------------------------------------------------------------

def _flat_paths(params: PyTree) -> list[str]:
    return [path_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _examples(paths: Sequence[str], n: int = 5) -> list[str]:
    """Up to ``n`` paths spread over the whole list (first, last and evenly in between)."""
    if len(paths) <= n:
        return list(paths)
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


def check_rules_match(params_or_paths: PyTree | Sequence[str], regexes: Sequence[str], what: str = "rule") -> None:
    """Raise ``ValueError`` if some regex ``re.search``-matches no parameter path.

    Args:
      params_or_paths: a params pytree, or a flat sequence of path strings.
      regexes: the patterns to check.
      what: how the error names the rule (e.g. ``'optim.groups'``).
    """
    if isinstance(params_or_paths, (list, tuple)) and all(isinstance(p, str) for p in params_or_paths):
        paths = list(params_or_paths)
    else:
        paths = _flat_paths(params_or_paths)
    for rx in regexes:
        pattern = re.compile(rx)
        if not any(pattern.search(p) for p in paths):
            raise ValueError(f"{what} regex {rx!r} matches no parameter; the tree has {len(paths)} parameters, "
                             f"e.g. {_examples(paths)}")


def label_params(params: PyTree, rules: Sequence[tuple[str, str]], default: str) -> PyTree:
    """Label every leaf: the label of the first rule whose regex ``re.search``-matches its path, else ``default``.

    Args:
      params: any pytree (only its structure and paths are used).
      rules: ``[(regex, label), ...]``; order matters (first match wins).
      default: label for leaves no rule matches.
    Returns:
      A pytree of str with the structure of ``params``.
    """
    compiled = [(re.compile(rx), label) for rx, label in rules]

    def one(path: str) -> str:
        for rx, label in compiled:
            if rx.search(path):
                return label
        return default

    return jax.tree.map(one, param_paths(params))


def freeze_mask_to_labels(frozen: PyTree, trainable_label: str = "trainable") -> PyTree:
    """Turn a pytree of bools (``True`` = frozen) into labels for ``make_optimizer(..., labels=...)``."""
    return jax.tree.map(lambda f: FROZEN if bool(f) else trainable_label, frozen)


def _layer_index(pattern: re.Pattern, path: str) -> int | None:
    m = pattern.search(path)
    return None if m is None else int(m.group("layer"))


def _compile_layer_regex(rx: str) -> re.Pattern:
    pattern = re.compile(rx)
    if "layer" not in pattern.groupindex:
        raise ValueError(f"optim.layer_regex {rx!r} needs a named group (?P<layer>\\d+) holding the layer index")
    return pattern


def count_layers(params: PyTree, layer_regex: str = DEFAULT_LAYER_REGEX) -> int:
    """Number of encoder layers ``L = 1 + max(i)`` over paths matching ``layer_regex`` (0 if none)."""
    pattern = _compile_layer_regex(layer_regex)
    idx = [i for i in (_layer_index(pattern, p) for p in _flat_paths(params)) if i is not None]
    return 1 + max(idx) if idx else 0


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------

def warmup_steps(cfg: Mapping[str, Any] | ml_collections.ConfigDict) -> int:
    """Resolved warmup length: ``warmup_steps`` if set, else ``round(warmup_ratio * total_steps)``."""
    cfg = resolve_optim_config(cfg)
    if cfg.warmup_steps is not None:
        if cfg.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {cfg.warmup_steps}")
        return int(cfg.warmup_steps)
    ratio = float(cfg.warmup_ratio or 0.0)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"optim.warmup_ratio must be in [0, 1], got {ratio}")
    if ratio == 0.0:
        return 0
    if not cfg.total_steps or cfg.total_steps <= 0:
        raise ValueError(f"optim.warmup_ratio={ratio} needs optim.total_steps > 0 (got {cfg.total_steps}); "
                         "set total_steps, or warmup_steps instead")
    return int(round(ratio * cfg.total_steps))


def make_schedule(cfg: Mapping[str, Any] | ml_collections.ConfigDict) -> optax.Schedule:
    """The base learning-rate schedule ``step -> lr`` (float32 scalar; jit-safe) of an ``optim`` section.

    With ``W`` warmup steps, ``T = total_steps``, peak ``lr`` and ``end = end_lr_factor * lr``:
      * all: ``lr * step / W`` for ``step < W`` (so the first update, step 0, has LR 0 when ``W > 0``);
      * ``constant``: ``lr`` afterwards;
      * ``linear``: from ``lr`` at ``W`` to ``end`` at ``T``, ``end`` after;
      * ``cosine``: half-cosine from ``lr`` at ``W`` to ``end`` at ``T``, ``end`` after;
      * ``warmup_stable_decay``/``wsd``: ``lr`` until ``T - D`` with ``D = round(decay_ratio * T)``,
        then ``decay_shape`` (linear / cosine / 1-sqrt) down to ``end`` at ``T``.
    """
    cfg = resolve_optim_config(cfg)
    name = SCHEDULE_ALIASES.get(cfg.schedule, cfg.schedule)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: {list(SCHEDULES) + list(SCHEDULE_ALIASES)}")
    lr = float(cfg.learning_rate)
    end = lr * float(cfg.end_lr_factor)
    total = cfg.total_steps
    if name != "constant" and (total is None or total <= 0):
        raise ValueError(f"schedule {name!r} needs optim.total_steps > 0, got {total}")
    warm = warmup_steps(cfg)
    if total is not None and total > 0 and warm > total:
        raise ValueError(f"optim warmup ({warm} steps) is longer than total_steps ({total})")

    decay_steps, stable_end = 0, 0
    if name == "warmup_stable_decay":
        if not 0.0 <= cfg.decay_ratio <= 1.0:
            raise ValueError(f"optim.decay_ratio must be in [0, 1], got {cfg.decay_ratio}")
        if cfg.decay_shape not in WSD_DECAY_SHAPES:
            raise ValueError(f"unknown optim.decay_shape {cfg.decay_shape!r}; valid: {list(WSD_DECAY_SHAPES)}")
        decay_steps = int(round(cfg.decay_ratio * total))
        if warm + decay_steps > total:
            raise ValueError(f"WSD warmup ({warm}) + decay ({decay_steps}) steps exceed total_steps ({total})")
        stable_end = total - decay_steps
    # optax's schedules, joined at the phase boundaries (optax.join_schedules calls each phase
    # with the step counted from its start). A phase of length 0 decays in one step, as before.
    phases: list[optax.Schedule] = []
    boundaries: list[int] = []
    if warm > 0:
        phases.append(optax.linear_schedule(0.0, lr, warm))
        boundaries.append(warm)
    if name == "constant":
        phases.append(optax.constant_schedule(lr))
    elif name == "linear":
        phases.append(optax.linear_schedule(lr, end, max(total - warm, 1)))
    elif name == "cosine":
        phases.append(optax.cosine_decay_schedule(lr, max(total - warm, 1), alpha=float(cfg.end_lr_factor)))
    else:  # warmup_stable_decay: stable at lr, then the decay shape over the last decay_steps
        phases.append(optax.constant_schedule(lr))
        boundaries.append(stable_end)
        phases.append(_wsd_decay(cfg.decay_shape, lr, float(cfg.end_lr_factor), max(decay_steps, 1)))
    joined = phases[0] if len(phases) == 1 else optax.join_schedules(phases, boundaries)
    return lambda step: jnp.asarray(joined(jnp.asarray(step, jnp.float32)), jnp.float32)


def _wsd_decay(shape: str, lr: float, end_factor: float, steps: int) -> optax.Schedule:
    """WSD's final phase over ``steps`` steps, ``lr`` to ``end_factor * lr``: linear or cosine (optax's),
    or 1-sqrt (Hägele et al. 2024; optax has none)."""
    end = lr * end_factor
    if shape == "linear":
        return optax.linear_schedule(lr, end, steps)
    if shape == "cosine":
        return optax.cosine_decay_schedule(lr, steps, alpha=end_factor)
    return lambda step: lr + (end - lr) * jnp.sqrt(jnp.clip(step / steps, 0.0, 1.0))


def scale_schedule(schedule: optax.Schedule, mult: float) -> optax.Schedule:
    """``step -> mult * schedule(step)`` (identity when ``mult == 1``)."""
    if mult == 1.0:
        return schedule
    return lambda step: mult * schedule(step)


# ----------------------------------------------------------------------------------------------
# Optimizer
# ----------------------------------------------------------------------------------------------

def _parse_groups(groups: Sequence[Mapping[str, Any]]) -> list[tuple[str, re.Pattern, float | None]]:
    """``[(regex, compiled, lr_mult or None for frozen)]`` from ``optim.groups``."""
    out = []
    for i, g in enumerate(groups or ()):
        g = dict(g.items()) if hasattr(g, "items") else None
        if g is None or "regex" not in g:
            raise ValueError(f"optim.groups[{i}] must be a mapping with a 'regex' key, got {groups[i]!r}")
        extra = sorted(set(g) - {"regex", "lr_mult", "frozen"})
        if extra:
            raise ValueError(f"optim.groups[{i}] has unknown key(s) {extra}; valid: ['regex', 'lr_mult', 'frozen']")
        frozen = bool(g.get("frozen", False))
        if frozen and g.get("lr_mult") not in (None, 0, 0.0):
            raise ValueError(f"optim.groups[{i}] sets both frozen=True and lr_mult={g['lr_mult']}")
        if not frozen:
            if "lr_mult" not in g:
                raise ValueError(f"optim.groups[{i}] needs 'lr_mult' or 'frozen': True, got {g}")
            mult = float(g["lr_mult"])
            if mult < 0 or not math.isfinite(mult):
                raise ValueError(f"optim.groups[{i}].lr_mult must be finite and >= 0, got {mult}")
            frozen = mult == 0.0
        out.append((g["regex"], re.compile(g["regex"]), None if frozen else float(g["lr_mult"])))
    return out


def _config_multipliers(cfg: ml_collections.ConfigDict, paths: list[str]) -> tuple[list[float | None], int]:
    """Per-leaf LR multiplier (``None`` = frozen) from groups, freezing flags and LLRD; and ``L``."""
    groups = _parse_groups(cfg.groups)
    check_rules_match(paths, [g[0] for g in groups], what="optim.groups")
    emb_rx = re.compile(cfg.embeddings_regex)
    layer_rx = _compile_layer_regex(cfg.layer_regex)
    layer_of = [_layer_index(layer_rx, p) for p in paths]
    is_emb = [li is None and bool(emb_rx.search(p)) for p, li in zip(paths, layer_of)]
    num_layers = 1 + max((i for i in layer_of if i is not None), default=-1)

    mults: list[float | None] = []
    for p in paths:
        m: float | None = 1.0
        for _, rx, gm in groups:
            if rx.search(p):
                m = gm
                break
        mults.append(m)

    if cfg.freeze_embeddings:
        if not any(is_emb):
            raise ValueError(f"optim.freeze_embeddings=True but embeddings_regex {cfg.embeddings_regex!r} matches no "
                             f"parameter, e.g. {_examples(paths)}")
        mults = [None if e else m for m, e in zip(mults, is_emb)]

    k = int(cfg.freeze_lower_layers or 0)
    if k < 0:
        raise ValueError(f"optim.freeze_lower_layers must be >= 0, got {k}")
    if k > 0:
        if k > num_layers:
            raise ValueError(f"optim.freeze_lower_layers={k} but the model has {num_layers} layers "
                             f"(layer_regex {cfg.layer_regex!r}), e.g. {_examples(paths)}")
        mults = [None if (li is not None and li < k) else m for m, li in zip(mults, layer_of)]

    d = float(cfg.layerwise_lr_decay)
    if not 0.0 < d <= 1.0:
        raise ValueError(f"optim.layerwise_lr_decay must be in (0, 1], got {d}")
    if d != 1.0:
        if num_layers == 0:
            raise ValueError(f"optim.layerwise_lr_decay={d} but layer_regex {cfg.layer_regex!r} matches no parameter, "
                             f"e.g. {_examples(paths)}")
        for j, (li, e) in enumerate(zip(layer_of, is_emb)):
            if mults[j] is None:
                continue
            if li is not None:
                mults[j] *= d ** (num_layers - li)
            elif e:
                mults[j] *= d ** (num_layers + 1)
    return mults, num_layers


def _mult_label(mult: float) -> str:
    return f"lr_x{mult:.6g}"


def _inner_optimizer(cfg: ml_collections.ConfigDict, lr: optax.Schedule, decay_mask: PyTree | None
                     ) -> optax.GradientTransformation:
    wd = float(cfg.weight_decay or 0.0)
    if wd < 0:
        raise ValueError(f"optim.weight_decay must be >= 0, got {wd}")
    mask = decay_mask if wd > 0 else None
    if cfg.name == "adamw":
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=mask)
    if cfg.name == "lamb":
        return optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=mask)
    if cfg.name == "adafactor":
        # optax adds adafactor's decay after the LR scaling; scale it by the LR ourselves so that
        # weight_decay means the same thing (p -= lr * wd * p) as for adamw.
        decay = (lambda step: wd * lr(step)) if wd > 0 else None
        return optax.adafactor(learning_rate=lr, weight_decay_rate=decay, weight_decay_mask=mask)
    if cfg.name == "sgd":
        momentum = float(cfg.momentum or 0.0) or None
        sgd = optax.sgd(lr, momentum=momentum, nesterov=bool(cfg.nesterov))
        return optax.chain(optax.add_decayed_weights(wd, mask), sgd) if wd > 0 else sgd
    raise ValueError(f"unknown optimizer {cfg.name!r}; valid: {list(OPTIMIZERS)}")


def make_optimizer(cfg: Mapping[str, Any] | ml_collections.ConfigDict | None, params: PyTree,
                   labels: PyTree | None = None, label_lr_mults: Mapping[str, float] | None = None,
                   ) -> tuple[optax.GradientTransformation, dict[str, Any]]:
    """Build the optimizer for ``params`` from an ``optim`` config section.

    Args:
      cfg: the ``optim`` section (``ConfigDict`` or dict); missing keys take
        :func:`default_optim_config` values, unknown keys are an error.
      params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``; only paths/sizes are read).
      labels: optional precomputed labels (pytree of str with the structure of ``params``, or a
        prefix of it), e.g. from PEFT. They replace the regex labelling (``groups``, ``freeze_*``,
        ``layerwise_lr_decay`` must then be left at their defaults); label :data:`FROZEN` freezes.
      label_lr_mults: with ``labels``: LR multiplier per label (missing labels get ``1.0``).
    Returns:
      ``(tx, info)``. ``tx = chain(clip_by_global_norm over trainable leaves, partition(...))``.
      ``info`` holds:
        ``labels``: pytree of str (structure of ``params``), the label of each leaf;
        ``label_lr_mults``: ``{label: multiplier}`` (``'frozen'`` -> ``0.0``);
        ``decay_mask``: pytree of bool, ``True`` where weight decay applies (frozen leaves: ``False``);
        ``num_trainable`` / ``num_frozen``: parameter (element) counts;
        ``num_layers``: ``L`` found by ``layer_regex``; ``schedule``: the base schedule;
        ``config``: the resolved ``ConfigDict``.
    """
    cfg = resolve_optim_config(cfg)
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.name!r}; valid: {list(OPTIMIZERS)}")
    schedule = make_schedule(cfg)

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("make_optimizer got a params tree with no leaves")
    paths = [path_str(kp) for kp, _ in flat]
    sizes = [int(np.prod(getattr(x, "shape", ()))) for _, x in flat]

    if labels is not None:
        changed = {k: cfg[k] for k in ("groups", "freeze_embeddings", "freeze_lower_layers", "layerwise_lr_decay")
                   if cfg[k] != default_optim_config()[k]}
        if changed:
            raise ValueError(f"make_optimizer got explicit labels and also regex-labelling options {changed}; "
                             "fold them into the labels (and label_lr_mults) instead")
        try:
            full = jax.tree.map(lambda lab, sub: jax.tree.map(lambda _: lab, sub), labels, params)
            leaf_labels = treedef.flatten_up_to(full)
        except (ValueError, TypeError) as e:
            raise ValueError(f"labels do not match the params tree structure ({e}); params paths e.g. "
                             f"{_examples(paths)}") from None
        bad = [lab for lab in leaf_labels if not isinstance(lab, str)]
        if bad:
            raise ValueError(f"labels must be str, got {type(bad[0]).__name__} {bad[0]!r}")
        mults_in = dict(label_lr_mults or {})
        unknown = sorted(set(mults_in) - set(leaf_labels))
        if unknown:
            raise ValueError(f"label_lr_mults has labels {unknown} that no parameter carries; labels: "
                             f"{sorted(set(leaf_labels))}")
        label_mult = {lab: (0.0 if lab == FROZEN else float(mults_in.get(lab, 1.0))) for lab in leaf_labels}
        for lab, m in label_mult.items():
            if m < 0 or not math.isfinite(m):
                raise ValueError(f"label_lr_mults[{lab!r}] must be finite and >= 0, got {m}")
        leaf_labels = [FROZEN if label_mult[lab] == 0.0 else lab for lab in leaf_labels]
        label_mult = {lab: label_mult.get(lab, 0.0) for lab in leaf_labels}
        num_layers = count_layers(params, cfg.layer_regex)
    else:
        if label_lr_mults is not None:
            raise ValueError("label_lr_mults needs labels=...; use optim.groups for regex groups")
        mults, num_layers = _config_multipliers(cfg, paths)
        label_mult = {FROZEN: 0.0} if any(m is None for m in mults) else {}
        names: dict[float, str] = {}
        for m in sorted({m for m in mults if m is not None}, reverse=True):
            name = _mult_label(m)
            while name in label_mult:  # two multipliers equal to 6 digits: keep them apart
                name += "'"
            names[m] = name
            label_mult[name] = m
        leaf_labels = [FROZEN if m is None else names[m] for m in mults]

    trainable = [lab != FROZEN for lab in leaf_labels]
    no_decay = re.compile(cfg.no_decay_regex) if cfg.no_decay_regex else None
    decay = [t and not (no_decay and no_decay.search(p)) for t, p in zip(trainable, paths)]
    label_tree = treedef.unflatten(leaf_labels)
    decay_mask = treedef.unflatten(decay)
    trainable_tree = treedef.unflatten(trainable)

    transforms = {}
    for lab, mult in label_mult.items():
        if lab == FROZEN:
            transforms[lab] = optax.set_to_zero()
        else:
            transforms[lab] = _inner_optimizer(cfg, scale_schedule(schedule, mult), decay_mask)
    partition = getattr(optax, "partition", None) or optax.multi_transform
    tx = partition(transforms, label_tree)

    clip = cfg.grad_clip_norm
    if clip is not None and clip < 0:
        raise ValueError(f"optim.grad_clip_norm must be >= 0 or None, got {clip}")
    if clip:
        clip_tx = optax.clip_by_global_norm(float(clip))
        if not all(trainable):  # frozen grads must not count towards the norm (torch: no .grad)
            clip_tx = optax.masked(clip_tx, trainable_tree)
        tx = optax.chain(clip_tx, tx)

    info = {
        "labels": label_tree,
        "label_lr_mults": label_mult,
        "decay_mask": decay_mask,
        "num_trainable": sum(s for s, t in zip(sizes, trainable) if t),
        "num_frozen": sum(s for s, t in zip(sizes, trainable) if not t),
        "num_layers": num_layers,
        "schedule": schedule,
        "config": cfg,
    }
    return tx, info


def lr_multipliers(info: Mapping[str, Any]) -> dict[str, float]:
    """``{parameter path: LR multiplier}`` from ``make_optimizer``'s ``info`` (frozen -> ``0.0``)."""
    paths = jax.tree.leaves(param_paths(info["labels"]))
    labels = jax.tree.leaves(info["labels"])
    return {p: info["label_lr_mults"][lab] for p, lab in zip(paths, labels)}


def trainable_mask(info: Mapping[str, Any]) -> PyTree:
    """Pytree of bool (structure of the params): ``True`` where the leaf is not frozen."""
    return jax.tree.map(lambda lab: lab != FROZEN, info["labels"])


# ----------------------------------------------------------------------------------------------
# Re-initialisation
# ----------------------------------------------------------------------------------------------

def reinit_top_layers(params: PyTree, fresh_params: PyTree, k: int, *, include_pooler: bool = True,
                      layer_regex: str = DEFAULT_LAYER_REGEX, pooler_regex: str = DEFAULT_POOLER_REGEX) -> PyTree:
    """Replace the top ``k`` encoder layers (and the pooler) by freshly initialised values.

    The re-init trick for few-sample fine-tuning (Zhang et al. 2021, "Revisiting Few-sample BERT
    Fine-tuning"; Mosbach et al. 2021). With ``L`` layers, every leaf of ``layer_{L-k} .. layer_{L-1}``
    and, if ``include_pooler`` and ``k > 0``, every leaf matching ``pooler_regex`` (a model without
    pooler is fine) is taken from ``fresh_params``; all other leaves come from ``params``.

    Args:
      params: trained (pre-trained) params.
      fresh_params: params of the same model from a fresh ``init`` (same structure and shapes).
      k: number of top layers, ``0 <= k <= L``.
    Returns:
      A new pytree (leaves are shared, not copied).
    """
    p_flat, p_def = jax.tree_util.tree_flatten_with_path(params)
    f_flat, f_def = jax.tree_util.tree_flatten_with_path(fresh_params)
    if p_def != f_def:
        pp, fp = {path_str(kp) for kp, _ in p_flat}, {path_str(kp) for kp, _ in f_flat}
        raise ValueError(f"fresh_params does not match params: missing {sorted(pp - fp)[:10]}, "
                         f"unexpected {sorted(fp - pp)[:10]}")
    layer_rx = _compile_layer_regex(layer_regex)
    pooler_rx = re.compile(pooler_regex)
    paths = [path_str(kp) for kp, _ in p_flat]
    num_layers = count_layers(params, layer_regex)
    if not 0 <= k <= num_layers:
        raise ValueError(f"reinit_top_layers: k={k} must be in [0, {num_layers}] (layers found by {layer_regex!r}), "
                         f"e.g. {_examples(paths)}")
    out = []
    for path, (_, old), (_, new) in zip(paths, p_flat, f_flat):
        li = _layer_index(layer_rx, path)
        replace = k > 0 and ((li is not None and li >= num_layers - k)
                             or (include_pooler and li is None and bool(pooler_rx.search(path))))
        if replace and getattr(old, "shape", None) != getattr(new, "shape", None):
            raise ValueError(f"reinit_top_layers: {path} has shape {old.shape} but the fresh value {new.shape}")
        out.append(new if replace else old)
    return p_def.unflatten(out)


__all__ = [
    "FROZEN", "OPTIMIZERS", "SCHEDULES", "DEFAULT_NO_DECAY_REGEX", "DEFAULT_EMBEDDINGS_REGEX", "DEFAULT_LAYER_REGEX",
    "default_optim_config", "resolve_optim_config", "path_str", "param_paths", "label_params", "check_rules_match",
    "freeze_mask_to_labels", "count_layers", "warmup_steps", "make_schedule", "scale_schedule", "make_optimizer",
    "lr_multipliers", "trainable_mask", "reinit_top_layers",
]
