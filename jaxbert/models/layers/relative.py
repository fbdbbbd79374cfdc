"""Encoder-level relative positions: one module per backbone whose output every layer's attention reads.

Some families keep their relative-position parameters once for the whole encoder, not per layer:
MPNet's ``relative_attention_bias`` (one learned bias per head and distance bucket, added to
every layer's attention logits), DeBERTa's ``rel_embeddings`` (relative position embeddings,
normed once, projected by each layer's disentangled attention). A *relative-position kind* is
that module. The encoder calls it once per forward pass with the query and key position ids
and hands what it returns to every block's attention module as keyword arguments::

    context = kind(config, name="relative_positions")(q_positions [b, q], k_positions [b, k])
    attention(x, mask=..., **context)          # e.g. {"bias": [b, h, q, k]} or
                                               # {"rel_embeddings": [2P, embed], "relative_pos": [b, q, k]}

A ``"bias"`` entry is added to the block's own bias (ALiBi) so that the standard attention needs
no change; other entries are read by the attention kind the family registers
(:func:`jaxbert.models.layers.attention.register_attention_kind`). When the last block runs for
kept tokens only (``query_index`` / ``first_token_only``) the encoder calls the kind again with
the kept query positions, so a kind never has to know about token subsets.

Kinds work on position *ids* (differences of them), so packed and unpadded streams, which
carry each token's original position, give the padded result. Parameters live under
``relative_positions/`` in the backbone's tree (the family's key table maps its HF names there).

``config.relative_positions = None`` (the default) builds nothing and passes nothing.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

#: name -> Linen module class built as ``cls(config, name="relative_positions")`` and called as
#: ``module(q_positions [b, q], k_positions [b, k]) -> dict[str, jax.Array]``.
RELATIVE_POSITION_KINDS: dict[str, type[nn.Module]] = {}


def register_relative_kind(name: str, module: type[nn.Module], *, replace: bool = False) -> None:
    """Make ``module`` selectable as ``config.relative_positions = name``."""
    if name in RELATIVE_POSITION_KINDS and not replace:
        raise ValueError(f"relative-position kind {name!r} is already registered (pass replace=True to override)")
    RELATIVE_POSITION_KINDS[name] = module


def get_relative_kind(name: str) -> type[nn.Module]:
    """The module class registered as ``name``; ValueError listing the registered kinds."""
    if name not in RELATIVE_POSITION_KINDS:
        raise ValueError(f"unknown relative_positions {name!r}; registered: {sorted(RELATIVE_POSITION_KINDS)} "
                         "(a family folder adds one with jaxbert.models.layers.relative.register_relative_kind)")
    return RELATIVE_POSITION_KINDS[name]


def build(config: Any) -> nn.Module | None:
    """The encoder's relative-position module for ``config`` (call in ``setup``), or None."""
    name = getattr(config, "relative_positions", None)
    return None if name is None else get_relative_kind(name)(config, name="relative_positions")


def merge_bias(context: dict[str, jax.Array] | None, bias: jax.Array | None
               ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """``(bias, other kwargs)``: the context's ``"bias"`` added to the block's own ``bias`` (either may be None)."""
    rest = dict(context or {})
    extra = rest.pop("bias", None)
    if extra is None:
        return bias, rest
    return (extra if bias is None else bias + extra), rest
