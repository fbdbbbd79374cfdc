"""The PEFT interface: a method is a set of pure functions on the parameter pytree.

A :class:`PeftMethod` never edits the model code. It can

* add **extensions** to the model config (adapters, prefixes, soft prompts: modules inserted at
  the encoder's extension sites, :mod:`jaxbert.models.layers.extensions`);
* add **extra leaves** to the params tree next to the matrices they modify (LoRA ``lora_a`` /
  ``lora_b``, DSEE ``dsee_values`` / ``dsee_index`` / ``prune_mask``), initialised by
  :meth:`PeftMethod.init` from the (pretrained) base params;
* **materialise** the params the model is applied with (:meth:`PeftMethod.materialize`:
  ``W + scale * A @ B`` ...), a pure function run inside the jitted step;
* say which leaves are **trainable** (:meth:`PeftMethod.labels`: a pytree of ``'peft'`` /
  ``'frozen'`` labels for :func:`jaxbert.train.optim.make_optimizer`; frozen leaves get
  ``optax.set_to_zero`` and no optimizer state);
* wrap the **optimizer** (:meth:`PeftMethod.wrap_optimizer`, HFT's stage masks) and register
  host-side **step hooks** (:meth:`PeftMethod.step_hooks`, DSEE's pruning);
* **merge** into plain base params for export (:meth:`PeftMethod.merge`) when the method allows.

:class:`PeftModel` packages a task model and a method behind the Linen ``init`` / ``apply``
interface, so the training engine, sharding, checkpointing and evaluation code use it exactly
like the plain model: ``init`` returns the base params plus the PEFT leaves, ``apply``
materialises them and calls the (extended) model.

Paths are ``'/'``-joined keys (``encoder/layer_3/attention/query/kernel``), as everywhere in jaxbert.
Every PEFT-added leaf has a path segment in :meth:`PeftMethod.peft_names` (the extension names
and the extra leaf names), which is how checkpoints and merges tell them from base leaves.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
from flax.core import meta

from jaxbert.models.params import flatten_mapping, split_path, unflatten_mapping

PyTree = Any

#: Label of trainable leaves in :meth:`PeftMethod.labels` (any label other than 'frozen' trains).
TRAINABLE = "peft"
#: Label of frozen leaves (reserved by :mod:`jaxbert.train.optim`).
FROZEN = "frozen"
#: Default regex of the task head, trained by every PEFT method (a fresh head must learn). For BERT
#: sequence classification this is the pooler + classifier: the pooler dense layer plays the part of
#: the dense layer inside RoBERTa's classification head, which peft's ``modules_to_save=["classifier"]``
#: (and the LoRA paper's GLUE setup) trains; in sentence-transformers checkpoints such as MiniLM the
#: pooler was never trained for the [CLS] path, so freezing it would cripple every PEFT method.
#: The sentence embedder's pair classifier (softmax / teacher-logit objectives) and the
#: mixture-of-experts router (trained by its own routing loss) are fresh heads too.
DEFAULT_HEAD_REGEX = r"^(classifier|qa_head|pair_classifier|encoder/pooler|encoder/router)/"


class PeftError(ValueError):
    """A PEFT option, target or checkpoint does not fit the model; the message names what and where."""


# ----------------------------------------------------------------------------------------------
# Param-tree helpers
# ----------------------------------------------------------------------------------------------

#: Nested dict -> ``{'a/b/c': leaf}`` (boxed ``nn.Partitioned`` leaves stay boxed) and back;
#: the one param-path spelling of :mod:`jaxbert.models.params`.
flatten = flatten_mapping
unflatten = unflatten_mapping


def shape_of(x: Any) -> tuple[int, ...]:
    if isinstance(x, meta.Partitioned):
        x = x.value
    return tuple(getattr(x, "shape", ()))


def examples(paths, n: int = 6) -> str:
    paths = list(paths)
    return ", ".join(paths[:n]) + (f", ... ({len(paths)} in all)" if len(paths) > n else "")


def match_paths(flat: Mapping[str, Any], regex: str, option: str, min_ndim: int = 0) -> list[str]:
    """Paths of ``flat`` that ``regex`` searches; a clear error when none (or a non-matrix) match."""
    try:
        rx = re.compile(regex)
    except re.error as e:
        raise PeftError(f"{option}={regex!r} is not a valid regex: {e}") from None
    hits = [p for p in flat if rx.search(p)]
    if not hits:
        raise PeftError(f"{option}={regex!r} matches no parameter; parameter paths include: "
                        f"{examples(sorted(flat), 8)}")
    if min_ndim:
        bad = [p for p in hits if len(shape_of(flat[p])) < min_ndim]
        if bad:
            raise PeftError(f"{option}={regex!r} matches {bad[0]} of shape {shape_of(flat[bad[0]])}; "
                            f"it must select matrices (>= {min_ndim} dims), e.g. a '.../kernel'")
    return hits


def num_layers(paths) -> int:
    """``L`` from ``layer_{i}`` path segments (0 when there are none)."""
    idx = [int(m.group(1)) for p in paths for m in [re.search(r"(?:^|/)layer_(\d+)/", p)] if m]
    return 1 + max(idx) if idx else 0


def count(flat: Mapping[str, Any], paths=None) -> int:
    paths = flat.keys() if paths is None else paths
    return int(sum(int(np.prod(shape_of(flat[p]))) for p in paths))


# ----------------------------------------------------------------------------------------------
# The method interface
# ----------------------------------------------------------------------------------------------

class PeftMethod:
    """Base class. Subclasses set ``name``, ``section`` (the ``config.peft.<section>`` options),
    ``DEFAULTS`` (option defaults, also the config defaults), ``default_learning_rate`` and
    override what they need; everything has a do-nothing default.

    Args:
      model_config: the task model's config (e.g. :class:`jaxbert.models.bert.BertConfig`).
      head_regex: leaves that always train (the task head).
      **options: the method's options (unknown names are an error).
    """

    name: ClassVar[str] = ""
    section: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: A sensible AdamW learning rate for MiniLM/BERT-base-sized encoders (configs use it).
    default_learning_rate: ClassVar[float] = 1e-4
    #: Whether :meth:`merge` can fold the method into plain base params (no extensions left).
    mergeable: ClassVar[bool] = True
    #: Path segments of leaves the method adds (besides its extensions' names).
    extra_leaf_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_config: Any, head_regex: str = DEFAULT_HEAD_REGEX, **options: Any):
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            raise PeftError(f"peft.{self.section} has unknown option(s) {unknown}; valid: {sorted(self.DEFAULTS)}")
        self.model_config = model_config
        self.head_regex = head_regex
        try:
            self._head_rx = re.compile(head_regex) if head_regex else None
        except re.error as e:
            raise PeftError(f"peft.head_regex={head_regex!r} is not a valid regex: {e}") from None
        self.options = {**self.DEFAULTS, **options}
        clash = [k for k in self.options if callable(getattr(type(self), k, None))]
        if clash:  # a programming error in a method class, not a user error
            raise TypeError(f"{type(self).__name__} option names {clash} shadow methods")
        for k, v in self.options.items():
            setattr(self, k, v)
        self.validate()

    # ---- configuration
    def validate(self) -> None:
        """Check option values (raise :class:`PeftError`)."""

    def to_config(self) -> dict[str, Any]:
        """JSON-able description (method name, options, head regex), stored in adapter checkpoints."""
        def plain(v):
            return list(v) if isinstance(v, tuple) else v
        return {"method": self.name, "head_regex": self.head_regex,
                "options": {k: plain(v) for k, v in self.options.items()}}

    # ---- structure
    def extensions(self) -> tuple:
        """Extension specs to append to ``model_config.extensions``."""
        return ()

    def peft_names(self) -> set[str]:
        return {e.name for e in self.extensions()} | set(self.extra_leaf_names)

    def is_peft_path(self, path: str) -> bool:
        names = self.peft_names()
        return any(seg in names for seg in split_path(path))

    def is_head(self, path: str) -> bool:
        return bool(self._head_rx and self._head_rx.search(path))

    def is_trainable(self, path: str) -> bool:
        """Default: every PEFT-added leaf and the head; everything else frozen."""
        return self.is_peft_path(path) or self.is_head(path)

    # ---- params
    def init(self, rng: jax.Array, params: PyTree) -> PyTree:
        """Add / initialise the method's leaves given the base (+ extension) params. Traceable."""
        return params

    def materialize(self, params: PyTree, rng: jax.Array | None = None, deterministic: bool = True) -> PyTree:
        """The params the (extended) model is applied with. Pure; runs inside jit."""
        return params

    def labels(self, params: PyTree) -> PyTree | None:
        """``'peft'`` / ``'frozen'`` per leaf (structure of ``params``), or None for 'all trainable'."""
        flat = flatten(params)
        return unflatten({p: (TRAINABLE if self.is_trainable(p) else FROZEN) for p in flat})

    def trainable_paths(self, params: PyTree) -> list[str]:
        """Leaves that receive updates (for HFT: in the first stage)."""
        return [p for p in flatten(params) if self.is_trainable(p)]

    def merge(self, params: PyTree) -> PyTree:
        """Plain base params (PEFT folded in, PEFT leaves dropped) for export."""
        if not self.mergeable:
            raise PeftError(f"peft method {self.name!r} inserts modules into the model "
                            f"({[type(e).__name__ for e in self.extensions()]}); it cannot be merged into "
                            "plain weights. Save it with jaxbert.peft.checkpoint.save_adapter instead.")
        flat = flatten(self.materialize(params, None, True))
        return unflatten({p: v for p, v in flat.items() if not self.is_peft_path(p)})

    # ---- training-loop hooks
    def wrap_optimizer(self, tx: optax.GradientTransformation, *, total_steps: int, steps_per_epoch: int,
                       seed: int) -> optax.GradientTransformation:
        return tx

    def step_hooks(self, total_steps: int) -> dict[int, Callable[[PyTree], PyTree]]:
        """``{step: params -> params}`` run by the loop after that many steps (host side, jitted once)."""
        return {}


# ----------------------------------------------------------------------------------------------
# The model wrapper
# ----------------------------------------------------------------------------------------------

def _rebox(boxed_flat: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """Put new values back into the logical-partitioning boxes of the leaves they replace."""
    out = {}
    for p, v in flat.items():
        old = boxed_flat.get(p)
        if isinstance(old, meta.Partitioned) and shape_of(old) == shape_of(v):
            out[p] = old.replace_boxed(v)
        else:
            out[p] = v
    return out


def _rng_of(rngs: Any) -> jax.Array:
    return rngs["params"] if isinstance(rngs, Mapping) else rngs


class PeftModel:
    """A task model with a PEFT method applied, behind the Linen ``init`` / ``apply`` interface.

    ``init`` gives the (boxed) params of the extended model plus the method's leaves;
    ``apply(variables, ...)`` calls the extended model with ``method.materialize(params)``.
    ``base_model`` is the model without the method (export, forgetting evaluation).
    """

    def __init__(self, model: nn.Module, method: PeftMethod):
        self.base_model = model
        self.method = method
        exts = tuple(method.extensions())
        if exts:
            cfg = model.config
            self.model = model.clone(config=cfg.replace(extensions=tuple(getattr(cfg, "extensions", ())) + exts))
        else:
            self.model = model

    @property
    def config(self) -> Any:
        return self.model.config

    def init(self, rngs: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        variables = self.model.init(rngs, *args, **kwargs)
        boxed = flatten(variables["params"])
        params = nn.unbox(variables["params"])
        params = self.method.init(jax.random.fold_in(_rng_of(rngs), 0x9EF7), params)
        return {**variables, "params": unflatten(_rebox(boxed, flatten(params)))}

    def apply(self, variables: Mapping[str, Any], *args: Any, rngs: Any = None, **kwargs: Any) -> Any:
        deterministic = kwargs.get("deterministic", True)
        rng = None
        if rngs is not None and not deterministic:
            rng = jax.random.fold_in(rngs["dropout"] if isinstance(rngs, Mapping) else rngs, 0x9EF7)
        params = self.method.materialize(variables["params"], rng, deterministic)
        return self.model.apply({**variables, "params": params}, *args, rngs=rngs, **kwargs)

    def init_from_base(self, base_params: PyTree, rng: jax.Array, sample_input: Mapping[str, Any]) -> PyTree:
        """Pretrained base params + freshly initialised extension params -> ``method.init``.

        Raises :class:`PeftError` if ``base_params`` does not fit the model.
        """
        # Eager: compiling the whole init costs more than running it once (only the extension values are kept).
        fresh = nn.unbox(self.model.init(rng, **sample_input)["params"])
        ff, fb = flatten(fresh), flatten(base_params)
        missing = sorted(set(fb) - set(ff))
        absent = sorted(p for p in set(ff) - set(fb) if not self.method.is_peft_path(p))
        bad = [(p, shape_of(fb[p]), shape_of(ff[p])) for p in fb if p in ff and shape_of(fb[p]) != shape_of(ff[p])]
        if missing or absent or bad:
            raise PeftError("base params do not fit the model: "
                            + "; ".join(s for s in (f"unexpected {examples(missing)}" if missing else "",
                                                    f"missing {examples(absent)}" if absent else "",
                                                    "shape mismatches " + ", ".join(f"{p}: {a} vs {b}" for p, a, b in bad[:5])
                                                    if bad else "") if s))
        merged = {**ff, **{p: jnp.asarray(v) for p, v in fb.items()}}
        return self.method.init(jax.random.fold_in(rng, 0x9EF7), unflatten(merged))

    def merge(self, params: PyTree) -> PyTree:
        return self.method.merge(params)

    def num_params(self, params: PyTree) -> dict[str, int]:
        """``{'base': ..., 'added': ..., 'trainable': ...}`` element counts."""
        flat = flatten(params)
        added = [p for p in flat if self.method.is_peft_path(p)]
        base = [p for p in flat if not self.method.is_peft_path(p)]
        return {"base": count(flat, base), "added": count(flat, added),
                "trainable": count(flat, self.method.trainable_paths(params))}


@dataclasses.dataclass
class Attached:
    """What :func:`jaxbert.peft.attach` returns: the wrapped model and its starting params."""

    model: PeftModel
    params: PyTree | None
