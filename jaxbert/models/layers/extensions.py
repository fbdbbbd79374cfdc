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
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

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
