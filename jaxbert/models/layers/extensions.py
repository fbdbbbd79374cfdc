"""Extension points of an encoder: the one seam through which modules are inserted into a model.

Adapters, prefixes, soft prompts (and later methods) do not edit the encoder; they are
*extensions*: small hashable specs listed in ``config.extensions``. The encoder calls each
extension at its *site*:

=================== ============================================================ =====================
site                 call                                                         where
=================== ============================================================ =====================
``embeddings``       ``module(x [b,l,e], mask [b,l], deterministic) -> (x, mask)`` after the embeddings
                     (may change ``l``: soft prompts)
``attention_kv``     ``module(batch, dtype) -> (k, v)`` each ``[b, p, h, d]``,       every attention layer
                     prepended to the layer's keys/values (prefix tuning)
``after_attention``  ``module(h [b,l,e], deterministic) -> h``, on the attention      every block
                     sub-layer output before the residual add (Houlsby adapter)
``after_mlp``        ``module(h [b,l,e], deterministic) -> h``, on the MLP output     every block
                     before the residual add (Houlsby / Pfeiffer adapters)
=================== ============================================================ =====================

An extension's parameters live under the module that calls it, named ``extension.name`` (e.g.
``encoder/layer_3/adapter_after_mlp/...``), so optimizer masks address them by regex like any
other parameter. With no extensions the parameter tree is exactly the plain model's.

Blocks call the sites through the helpers below, from one place per block kind (the encoder
block, the M2 block, the LLM decoder block, the mixture-of-experts block): :func:`prefix_kv` for ``attention_kv``,
:func:`apply_site` for ``after_attention`` / ``after_mlp``, :func:`embedding_modules` and
:func:`apply_embeddings` for ``embeddings``. They must be called inside a Linen ``compact``
method (or ``setup`` for :func:`embedding_modules`): the extension modules become children of
the calling module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import flax.linen as nn

SITES = ("embeddings", "attention_kv", "after_attention", "after_mlp")


@dataclasses.dataclass(frozen=True)
class Extension:
    """Base class of extension specs (frozen dataclasses, so configs stay hashable).

    Subclasses set ``site`` and ``name`` and implement :meth:`build`.
    """

    site: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def build(self, config: Any, layer_index: int | None, name: str) -> nn.Module:
        """Return the Linen module (constructed with ``name=name``) for this site.

        ``layer_index`` is the block's index, or None at the embeddings.
        """
        raise NotImplementedError


def at_site(config: Any, site: str) -> list[Extension]:
    """The extensions of ``config`` registered for ``site``, in config order."""
    if site not in SITES:
        raise ValueError(f"unknown extension site {site!r}; sites: {SITES}")
    exts = getattr(config, "extensions", ()) or ()
    for e in exts:
        if e.site not in SITES:
            raise ValueError(f"extension {type(e).__name__} has unknown site {e.site!r}; sites: {SITES}")
    return [e for e in exts if e.site == site]


def prefix_kv(config: Any, layer_index: int, batch: int, dtype) -> tuple[jax.Array, jax.Array] | None:
    """``(k, v)`` each ``[batch, p, heads, head_dim]`` of the ``attention_kv`` extensions, or None.

    At most one is meaningful; with several, the last in config order wins (its modules are
    still built, so their parameters exist).
    """
    kv = None
    for ext in at_site(config, "attention_kv"):
        kv = ext.build(config, layer_index, ext.name)(batch, dtype)
    return kv


def apply_site(config: Any, site: str, layer_index: int, h: jax.Array, deterministic: bool) -> jax.Array:
    """``h [b, l, embed]`` through every extension at ``site`` (``after_attention`` / ``after_mlp``)."""
    if site not in ("after_attention", "after_mlp"):
        raise ValueError(f"apply_site is for the sub-layer sites 'after_attention' / 'after_mlp', got {site!r}")
    for ext in at_site(config, site):
        h = ext.build(config, layer_index, ext.name)(h, deterministic)
    return h


def embedding_modules(config: Any) -> list[nn.Module]:
    """The ``embeddings`` extension modules of ``config`` (build them in the model's ``setup``)."""
    return [e.build(config, None, e.name) for e in at_site(config, "embeddings")]


def apply_embeddings(modules: list[nn.Module], x: jax.Array, mask: jax.Array,
                     deterministic: bool) -> tuple[jax.Array, jax.Array]:
    """``x [b, l, e]``, ``mask [b, l]`` through the embedding extensions (soft prompts may lengthen ``l``)."""
    for module in modules:
        x, mask = module(x, mask, deterministic)
    return x, mask


def refuse_sites(config: Any, sites: tuple[str, ...], why: str) -> None:
    """A clear error if ``config`` has an extension at one of ``sites`` (an architecture without them)."""
    for e in getattr(config, "extensions", ()) or ():
        if e.site in sites:
            raise ValueError(f"extension {type(e).__name__} uses site {e.site!r}: {why}")
