"""Sentence pooling: ``[b, l, e]`` token states + ``[b, l]`` mask -> ``[b, e]`` sentence vectors.

All modes compute in float32 (whatever the model's compute dtype) and ignore pad tokens
(``attention_mask == 0``); left and right padding are both handled.

=================  ===========================================================================
mode               result
=================  ===========================================================================
``cls``            first non-pad token (position 0 with right padding; sentence-transformers'
                   ``cls`` does the same)
``mean``           mean over non-pad tokens
``max``            element-wise max over non-pad tokens
``last``           last non-pad token (LLM embedders; sentence-transformers' ``lasttoken``)
``mean_sqrt_len``  sum over non-pad tokens / sqrt(count) (``mean_sqrt_len_tokens``)
``weightedmean``   position-weighted mean, weights 1, 2, ... from the first non-pad token
=================  ===========================================================================

A tuple of modes concatenates the pooled vectors in the given order, as sentence-transformers
does for configs with several ``pooling_mode_*`` flags.

:func:`read_st_pooling` reads the pooling / normalisation / length settings of a
sentence-transformers model directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp

POOLING_MODES = ("cls", "mean", "max", "last", "mean_sqrt_len", "weightedmean")

# sentence-transformers names (config strings and legacy ``pooling_mode_*`` flags) -> ours.
ST_MODE_NAMES = {
    "cls": "cls", "mean": "mean", "max": "max", "lasttoken": "last",
    "mean_sqrt_len_tokens": "mean_sqrt_len", "weightedmean": "weightedmean",
}
# Legacy flag order = sentence-transformers' concatenation order.
ST_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "last",
}


def check_mode(mode: str | Sequence[str]) -> tuple[str, ...]:
    """Return ``mode`` as a non-empty tuple of valid mode names; ValueError otherwise."""
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    if not modes:
        raise ValueError(f"empty pooling mode; valid modes: {POOLING_MODES}")
    for m in modes:
        if m not in POOLING_MODES:
            raise ValueError(f"unknown pooling mode {m!r}; valid modes: {POOLING_MODES}")
    return modes


def _first_index(mask: jax.Array) -> jax.Array:
    """Index of the first non-pad token per row (0 for an all-pad row). ``[b, l] -> [b]``."""
    return jnp.argmax(mask, axis=1)


def _last_index(mask: jax.Array) -> jax.Array:
    """Index of the last non-pad token per row (``l - 1`` for an all-pad row). ``[b, l] -> [b]``."""
    l = mask.shape[1]
    return l - 1 - jnp.argmax(mask[:, ::-1], axis=1)


def _gather(hidden: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


def _pool_one(h: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
    """``h [b, l, e]`` float32, ``mask [b, l]`` bool -> ``[b, e]`` float32."""
    m = mask[..., None].astype(jnp.float32)
    count = m.sum(axis=1)  # [b, 1]
    if mode == "cls":
        return _gather(h, _first_index(mask))
    if mode == "last":
        # An all-pad row has no last token: zeros, like sentence-transformers' masked gather.
        return _gather(h * m, _last_index(mask))
    if mode == "max":
        out = jnp.max(jnp.where(mask[..., None], h, -jnp.inf), axis=1)
        return jnp.where(count > 0, out, 0.0)  # all-pad row: 0, not -inf
    if mode in ("mean", "mean_sqrt_len"):
        total = (h * m).sum(axis=1)
        denom = jnp.maximum(count, 1e-9)
        return total / (denom if mode == "mean" else jnp.sqrt(denom))
    if mode == "weightedmean":
        pos = jnp.arange(1, h.shape[1] + 1, dtype=jnp.float32)[None, :] - _first_index(mask)[:, None]
        w = m * pos[..., None]
        return (h * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1e-9)
    raise ValueError(f"unknown pooling mode {mode!r}; valid modes: {POOLING_MODES}")


def pool(hidden: jax.Array, attention_mask: jax.Array, mode: str | Sequence[str] = "mean") -> jax.Array:
    """Pool token states ``hidden [b, l, e]`` with ``attention_mask [b, l]`` (1 = token) -> ``[b, e]``.

    Works on jax or numpy inputs, inside or outside ``jit`` (``mode`` must be static). The
    result is float32. A tuple of modes gives ``[b, len(modes) * e]`` (concatenated in order).
    Raises ValueError for an unknown mode (listing the valid ones) or mismatched shapes.
    """
    modes = check_mode(mode)
    if hidden.ndim != 3 or attention_mask.ndim != 2 or hidden.shape[:2] != attention_mask.shape:
        raise ValueError(f"pool expects hidden [b, l, e] and attention_mask [b, l]; got "
                         f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    h = jnp.asarray(hidden).astype(jnp.float32)
    mask = jnp.asarray(attention_mask) > 0
    outs = [_pool_one(h, mask, m) for m in modes]
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis (``torch.nn.functional.normalize``), float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ----------------------------------------------------------------------------- sentence-transformers dirs


def _module_kind(entry: dict) -> str:
    """``"sentence_transformers.models.Pooling"`` (any package path) -> ``"Pooling"``."""
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def read_st_modules(path: str | os.PathLike) -> list[dict]:
    """The entries of ``<path>/modules.json`` (sorted by ``idx``); errors name the file."""
    file = Path(path) / "modules.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a sentence-transformers directory")
    try:
        entries = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{file}: expected a JSON list of module objects")
    return sorted(entries, key=lambda e: e.get("idx", 0))


def _modes_from_pooling_config(cfg: dict, file: Path) -> str | tuple[str, ...]:
    if "pooling_mode" in cfg:  # sentence-transformers >= 6: a string or a list of strings
        raw = cfg["pooling_mode"]
        names = [raw] if isinstance(raw, str) else list(raw)
        unknown = [n for n in names if n not in ST_MODE_NAMES]
        if unknown or not names:
            raise ValueError(f"{file}: pooling_mode {raw!r} not supported; known: {sorted(ST_MODE_NAMES)}")
        modes = tuple(ST_MODE_NAMES[n] for n in names)
    else:
        unknown_flags = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v
                         and k not in ST_LEGACY_FLAGS]
        if unknown_flags:
            raise ValueError(f"{file}: pooling flags {unknown_flags} not supported; known: {list(ST_LEGACY_FLAGS)}")
        modes = tuple(mode for flag, mode in ST_LEGACY_FLAGS.items() if cfg.get(flag, False))
        modes = modes or ("mean",)  # sentence-transformers' default when no flag is set
    if cfg.get("include_prompt", True) is False:
        raise NotImplementedError(f"{file}: include_prompt=false (prompt tokens excluded from pooling) "
                                  "is not supported by jaxbert")
    return modes[0] if len(modes) == 1 else modes


def read_st_pooling(path: str | os.PathLike) -> tuple[str | tuple[str, ...], bool, int | None]:
    """Read a sentence-transformers directory: ``(mode, normalize, max_seq_length)``.

    * ``mode``: from the Pooling module's ``config.json`` — the ``pooling_mode`` string/list
      (newer sentence-transformers) or the legacy ``pooling_mode_*`` flags; mapped to
      :data:`POOLING_MODES` names (a tuple when several are set). No Pooling module -> ``"mean"``.
    * ``normalize``: True when ``modules.json`` has a ``Normalize`` module.
    * ``max_seq_length``: from the Transformer module's ``sentence_bert_config.json``, or None.

    Modules jaxbert cannot run (``Dense``, ``LayerNorm``, ...) raise NotImplementedError naming
    them: silently dropping a projection would give wrong embeddings.
    """
    path = Path(path)
    entries = read_st_modules(path)
    mode: str | tuple[str, ...] = "mean"
    normalize = False
    max_seq_length = None
    for entry in entries:
        kind = _module_kind(entry)
        sub = path / entry.get("path", "")
        if kind == "Transformer":
            sbert = sub / "sentence_bert_config.json"
            if sbert.is_file():
                value = json.loads(sbert.read_text()).get("max_seq_length")
                max_seq_length = int(value) if value is not None else None
        elif kind == "Pooling":
            cfg_file = sub / "config.json"
            if not cfg_file.is_file():
                raise FileNotFoundError(f"{cfg_file} not found (Pooling module listed in {path}/modules.json)")
            mode = _modes_from_pooling_config(json.loads(cfg_file.read_text()), cfg_file)
        elif kind == "Normalize":
            normalize = True
        else:
            raise NotImplementedError(f"{path}/modules.json lists module {entry.get('type')!r} "
                                      f"(path {entry.get('path')!r}); jaxbert supports Transformer, "
                                      "Pooling and Normalize modules")
    return mode, normalize, max_seq_length


def st_transformer_dir(path: str | os.PathLike) -> Path:
    """Directory of the HF model inside a sentence-transformers dir (the Transformer module's path).

    Usually the directory itself (``"path": ""``); older exports use ``0_Transformer/``.
    """
    path = Path(path)
    for entry in read_st_modules(path):
        if _module_kind(entry) == "Transformer":
            return path / entry.get("path", "")
    raise ValueError(f"{path}/modules.json has no Transformer module")
