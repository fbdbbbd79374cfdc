"""Poolings for LLM embedders (LLM2Vec / ULLME / KaLM style), with instructions excluded via an embed mask.

Names (aliases in brackets) -> :mod:`jaxbert.models.pooling` modes:

==============================================  =======================================================
``mean``                                        mean over pooled tokens
``weighted_mean`` (``weightedmean``)            position-weighted mean, weights 1, 2, ... over the pooled
                                                tokens (LLM2Vec / SGPT: later tokens have seen more context
                                                in causal mode)
``last_token`` (``last``, ``eos``, ``eos_token``)  the last pooled token (with ``add_eos`` the appended EOS)
``first_token`` (``first``, ``cls``, ``bos``)   the first pooled token
==============================================  =======================================================

All modes work with left and right padding (they look at the mask, not at array ends).

**Embed mask** (LLM2Vec's ``embed_mask``): an instruction such as ``"Retrieve the definition of
the word: "`` is fed to the model (every token attends to it) but its tokens are left out of the
pooled vector. :func:`llm_pool` pools over ``attention_mask & embed_mask``;
:func:`instruction_embed_mask` builds the embed mask from per-row instruction lengths.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.models.pooling import pool

LLM_POOLINGS: dict[str, str] = {
    "mean": "mean",
    "weighted_mean": "weightedmean", "weightedmean": "weightedmean",
    "last_token": "last", "last": "last", "eos": "last", "eos_token": "last", "lasttoken": "last",
    "first_token": "cls", "first": "cls", "cls": "cls", "bos": "cls", "bos_token": "cls",
}


def canonical_pooling(name: str) -> str:
    """The :mod:`jaxbert.models.pooling` mode for an LLM pooling name; ValueError listing the valid names."""
    if not isinstance(name, str) or name not in LLM_POOLINGS:
        raise ValueError(f"unknown LLM pooling {name!r}; valid: {sorted(LLM_POOLINGS)}")
    return LLM_POOLINGS[name]


def llm_pool(hidden: jax.Array, attention_mask: jax.Array, mode: str = "mean",
             embed_mask: jax.Array | None = None) -> jax.Array:
    """Pool ``hidden [b, l, e]`` over tokens where ``attention_mask`` (and ``embed_mask``, if given) is 1.

    Returns float32 ``[b, e]``. A row whose pooled set is empty gives zeros (mean) or the state at
    the first/last real token, as :func:`jaxbert.models.pooling.pool` does for an all-pad row.
    """
    m = jnp.asarray(attention_mask) > 0
    if embed_mask is not None:
        if embed_mask.shape != attention_mask.shape:
            raise ValueError(f"embed_mask shape {tuple(embed_mask.shape)} != attention_mask shape "
                             f"{tuple(attention_mask.shape)}")
        m = m & (jnp.asarray(embed_mask) > 0)
    return pool(hidden, m.astype(jnp.int32), canonical_pooling(mode))


def instruction_embed_mask(attention_mask: np.ndarray, instruction_lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """``attention_mask`` with the first ``instruction_lengths[i]`` real tokens of row ``i`` set to 0.

    Works for left and right padding (counts real tokens, not array positions). int32 ``[b, l]``.
    """
    mask = np.asarray(attention_mask).astype(np.int32)
    n = np.asarray(instruction_lengths, np.int64).reshape(-1, 1)
    if n.shape[0] != mask.shape[0]:
        raise ValueError(f"{n.shape[0]} instruction lengths for {mask.shape[0]} rows")
    rank = np.cumsum(mask, axis=1)  # 1-based index among real tokens
    return (mask * (rank > n)).astype(np.int32)
