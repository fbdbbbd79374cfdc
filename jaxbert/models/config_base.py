"""What every backbone config shares: named-choice checks, the dtype fields, the JSON form.

The encoder (:class:`~jaxbert.models.transformer.model.EncoderConfig`), the LLM decoder
(:class:`~jaxbert.models.llm.model.LlmConfig`) and M2 (:class:`~jaxbert.models.m2.model.M2Config`)
are frozen dataclasses with string-valued switches (so they serialise to JSON) and a tuple of
``extensions`` (PEFT modules, :mod:`jaxbert.models.layers.extensions`). This module holds the
parts they have in common, once:

* :func:`check_choice` -- ``name=value`` must be one of ``allowed`` (the one error message);
* :func:`check_execution_fields` -- the activation, ``dtype`` / ``param_dtype``,
  ``attention_implementation`` and ``dot_general`` fields, where a config has them;
* :class:`ConfigMixin` -- ``compute_dtype`` / ``storage_dtype`` (jnp dtypes of the string
  fields), ``replace`` and ``to_dict`` (every field, extensions as ``{"type": ..., **fields}``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import jax.numpy as jnp

from jaxbert.models.layers.activations import ACTIVATIONS
from jaxbert.models.layers.attention import ATTENTION_IMPLEMENTATIONS
from jaxbert.models.layers.linear import DOT_GENERALS

__all__ = ["DTYPES", "check_choice", "check_execution_fields", "ConfigMixin"]

#: The dtype names a config may give for ``dtype`` (compute) and ``param_dtype`` (storage).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ``ValueError("name=value is not supported; expected one of allowed")`` unless ``value in allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; expected one of {allowed}")


def check_execution_fields(cfg: Any, activation_fields: Iterable[str] = ("hidden_act",)) -> None:
    """Check the fields every block config shares, where ``cfg`` has them.

    ``activation_fields`` (None values skipped) must name :data:`ACTIVATIONS`; ``dtype`` and
    ``param_dtype`` :data:`DTYPES`; ``attention_implementation`` and ``dot_general`` their registries.
    """
    for field in activation_fields:
        if getattr(cfg, field) is not None:
            check_choice(field, getattr(cfg, field), sorted(ACTIVATIONS))
    for field in ("dtype", "param_dtype"):
        check_choice(field, getattr(cfg, field), sorted(DTYPES))
    if hasattr(cfg, "attention_implementation"):
        check_choice("attention_implementation", cfg.attention_implementation, ATTENTION_IMPLEMENTATIONS)
    if hasattr(cfg, "dot_general"):
        check_choice("dot_general", cfg.dot_general, sorted(DOT_GENERALS))


class ConfigMixin:
    """Methods of a frozen-dataclass backbone config with ``dtype``, ``param_dtype`` and ``extensions`` fields."""

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def storage_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field in declaration order; ``extensions`` as ``[{"type": class name, **fields}, ...]``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extensions"}
        out["extensions"] = [{"type": type(e).__name__, **dataclasses.asdict(e)} for e in self.extensions]
        return out
