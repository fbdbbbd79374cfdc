"""Regex key tables: Hugging Face state-dict keys <-> jaxbert parameter paths (generic machinery).

A key table (:class:`KeyTable`) is a list of :class:`Rule` s for the backbone plus one list per
task head. A rule pairs a HF key template with a jaxbert path template; ``{name}`` placeholders
become named regex groups (``{layer}`` matches digits, ``{qkv}`` one of query/key/value), so one
table serves both directions. A rule's :class:`Transform` converts the array (transpose a Linear
weight, split heads, ...). The tables themselves live in each architecture's folder
(``jaxbert/models/<family>/hf.py``); this module knows no architecture.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
    """Array conversion between the HF layout and the jaxbert layout; ``cfg`` gives head counts."""

    to_jax: Callable[[np.ndarray, Any], np.ndarray]
    to_hf: Callable[[np.ndarray, Any], np.ndarray]


IDENTITY = Transform(lambda a, c: a, lambda a, c: a)
# torch Linear weight [out, in] <-> flax kernel [in, out]
LINEAR = Transform(lambda a, c: a.T, lambda a, c: a.T)
# q/k/v: [H*D, E] -> [E, H, D]
QKV_KERNEL = Transform(
    lambda a, c: a.T.reshape(a.shape[1], c.num_attention_heads, c.head_dim),
    lambda a, c: a.reshape(a.shape[0], -1).T)
QKV_BIAS = Transform(lambda a, c: a.reshape(c.num_attention_heads, c.head_dim), lambda a, c: a.reshape(-1))
# attention output: [E, H*D] -> [H, D, E]
OUT_KERNEL = Transform(
    lambda a, c: a.T.reshape(c.num_attention_heads, c.head_dim, a.shape[0]),
    lambda a, c: a.reshape(-1, a.shape[-1]).T)

_PLACEHOLDERS = {"layer": r"\d+", "qkv": r"query|key|value", "wb": r"weight|bias"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One key mapping: ``hf`` and ``jax`` templates with shared ``{placeholders}``."""

    hf: str
    jax: str
    transform: Transform = IDENTITY

    def match_hf(self, key: str) -> str | None:
        m = _template_regex(self.hf).match(key)
        return self.jax.format(**m.groupdict()) if m else None

    def parse_hf(self, key: str) -> tuple[str, dict[str, str]] | None:
        """``(jaxbert path, placeholder values)`` for a matching HF key (e.g. ``{"layer": "4"}``), else None."""
        m = _template_regex(self.hf).match(key)
        return (self.jax.format(**m.groupdict()), m.groupdict()) if m else None

    def match_jax(self, path: str) -> str | None:
        m = _template_regex(self.jax).match(path)
        return self.hf.format(**m.groupdict()) if m else None


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    """``"encoder.layer.{layer}.x"`` -> ``encoder\\.layer\\.(?P<layer>\\d+)\\.x\\Z``."""
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos:m.start()])
        out += f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + r"\Z")


def norm_rules(hf_prefix: str, jax_prefix: str) -> list[Rule]:
    """LayerNorm ``weight``/``bias`` -> ``scale``/``bias``; old TF-converted ``gamma``/``beta`` read too
    (export writes ``weight``/``bias``)."""
    return [Rule(f"{hf_prefix}.weight", f"{jax_prefix}/scale"), Rule(f"{hf_prefix}.bias", f"{jax_prefix}/bias"),
            Rule(f"{hf_prefix}.gamma", f"{jax_prefix}/scale"), Rule(f"{hf_prefix}.beta", f"{jax_prefix}/bias")]


def linear_rules(hf_prefix: str, jax_prefix: str) -> list[Rule]:
    """torch ``Linear`` ``weight [out, in]``/``bias`` -> flax ``kernel [in, out]``/``bias``."""
    return [Rule(f"{hf_prefix}.weight", f"{jax_prefix}/kernel", LINEAR), Rule(f"{hf_prefix}.bias", f"{jax_prefix}/bias")]


@dataclasses.dataclass(frozen=True)
class KeyTable:
    """The key mapping of one architecture, for every task it converts.

    * ``backbone``: rules for backbone keys (relative to ``hf_prefix``) <-> paths in the backbone
      module (under ``encoder/`` in task models).
    * ``hf_prefix``: prefix of backbone keys inside HF task models (``"bert."``, ``"model."``);
      bare backbone files have none (detected on load).
    * ``heads``: task -> rules for head keys (no prefix) <-> paths at the task-model root. The
      tasks listed here are the tasks the architecture converts.
    * ``benign``: regexes of checkpoint keys that never map to a parameter (buffers, tied copies).
    * ``other_heads``: regexes of keys of other tasks' heads (ignored, reported in ``ignored``).
    * ``optional``: regexes of jaxbert paths (as the rules write them, without the task model's
      ``encoder/``) of modules a model may lack by configuration, e.g. ``pooler/.*`` (MLM models
      and ``add_pooling_layer=False`` have none): checkpoint keys mapped there are ignored. Any
      other key a rule maps to a path the model does not have is an error under strict loading
      (layers beyond ``num_hidden_layers``, a bias the config turned off).
    * ``base_prefix``: prefix of backbone keys in a ``"base"`` export (LLMs export ``*ForCausalLM``
      files, backbone under ``"model."``; encoders export the bare backbone: ``""``).
    """

    backbone: Sequence[Rule]
    hf_prefix: str
    heads: Mapping[str, Sequence[Rule]]
    benign: Sequence[str] = ()
    other_heads: Sequence[str] = ()
    base_prefix: str = ""
    optional: Sequence[str] = ()

    def rules_for(self, task: str) -> Sequence[Rule]:
        """Head rules of ``task``; ValueError listing the supported tasks when it has none."""
        if task not in self.heads:
            raise ValueError(f"converting task {task!r} is not supported for this architecture "
                             f"(supported: {sorted(self.heads)})")
        return self.heads[task]

    def ignorable(self) -> list[str]:
        """Regexes of keys that are ignored rather than reported as unexpected."""
        return [*self.benign, *self.other_heads]
