"""Adapter-only checkpoints: the PEFT leaves and the trained leaves, plus the PEFT config.

Layout (a directory, written to a temporary sibling and renamed into place, so an interrupted
save never leaves a half-written adapter where a good one was)::

    <dir>/adapter_model.safetensors   '/'-joined param paths -> tensors (stored dtype; 0/1 pruning
                                      masks bit-packed, their shapes under "bit_packed")
    <dir>/adapter_config.json         {"format": "jaxbert-peft", "peft": {method, options, head_regex},
                                       "model": {hidden_size, num_hidden_layers, ...},
                                       "tensors": {path: shape}, "base_shapes": {path: shape}}

Saved leaves: every leaf the method added (LoRA factors, DSEE values and support, masks, adapter /
prefix / prompt modules) and every base leaf it trains (biases for BitFit, the head, ... ; for
HFT every leaf, since each may train in some stage). ``base_shapes`` records the shapes of the
base matrices the PEFT leaves modify, so :func:`load_adapter` can say exactly which base does not
fit. :func:`load_adapter` puts the saved leaves onto a base model's params and returns the
wrapped model, ready to ``apply``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.convert.atomic_dir import write_weights_dir
from jaxbert.peft.base import PeftError, PeftMethod, PeftModel, flatten, shape_of, unflatten

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "jaxbert-peft"
MODEL_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size")


@dataclasses.dataclass
class AdapterInfo:
    path: Path
    size_bytes: int
    num_tensors: int
    num_params: int


def _model_fingerprint(model_config: Any) -> dict[str, Any]:
    return {f: getattr(model_config, f, None) for f in MODEL_FIELDS}


def adapter_paths(method: PeftMethod, params: Any) -> list[str]:
    """Leaves an adapter checkpoint holds: PEFT-added leaves and trained base leaves."""
    flat = flatten(params)
    trained = set(method.trainable_paths(params))
    # is_trainable: every leaf that may train at some point (HFT: all of them, stage by stage).
    return sorted(p for p in flat if method.is_peft_path(p) or p in trained or method.is_trainable(p))


def _base_shapes(method: PeftMethod, flat: Mapping[str, Any]) -> dict[str, list[int]]:
    out = {}
    for p in flat:
        if not method.is_peft_path(p):
            continue
        module = p.rsplit("/", 1)[0]
        for leaf in ("kernel", "embedding"):
            q = f"{module}/{leaf}"
            if q in flat and not method.is_peft_path(q):
                out[q] = list(shape_of(flat[q]))
    return out


def save_adapter(path: str | os.PathLike, params: Any, method: PeftMethod, model_config: Any | None = None,
                 extra: Mapping[str, Any] | None = None) -> AdapterInfo:
    """Write the adapter of ``params`` (full PEFT params) to directory ``path``; returns its size."""

    path = Path(path)
    flat = {p: np.asarray(v) for p, v in flatten(jax.device_get(params)).items()}
    keep = adapter_paths(method, unflatten(flat))
    tensors, packed = {}, {}
    for p in keep:
        if p.endswith("/prune_mask"):  # 0/1 masks: one bit per entry on disk
            packed[p] = list(flat[p].shape)
            tensors[p] = np.packbits(flat[p].reshape(-1) != 0)
        else:
            tensors[p] = np.ascontiguousarray(flat[p])
    config = {"format": FORMAT, "version": 1, "peft": method.to_config(),
              "model": _model_fingerprint(model_config if model_config is not None else method.model_config),
              "tensors": {p: packed.get(p, list(t.shape)) for p, t in tensors.items()},
              "bit_packed": packed,
              "base_shapes": _base_shapes(method, flat), **dict(extra or {})}
    write_weights_dir(path, tensors, config, weights_name=WEIGHTS_NAME, config_name=CONFIG_NAME, fmt=FORMAT)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return AdapterInfo(path=path, size_bytes=size, num_tensors=len(tensors),
                       num_params=int(sum(np.prod(config["tensors"][p]) for p in tensors)))


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config, {path: array})`` of an adapter directory, with errors naming the files."""
    from safetensors.numpy import load_file

    path = Path(path)
    cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: {path} is not a jaxbert adapter directory")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise PeftError(f"{cfg_file} is not valid JSON: {e}") from None
    if config.get("format") != FORMAT:
        raise PeftError(f"{cfg_file} has format {config.get('format')!r}, expected {FORMAT!r}")
    tensors = dict(load_file(str(w_file)))
    for p, shape in config.get("bit_packed", {}).items():
        n = int(np.prod(shape))
        tensors[p] = np.unpackbits(tensors[p])[:n].reshape(shape).astype(np.float32)
    return config, tensors


def load_adapter(path: str | os.PathLike, model: Any, base_params: Any, sample_input: Mapping[str, Any],
                 tokenizer: Any = None) -> tuple[PeftModel, Any]:
    """Rebuild the PEFT model saved at ``path`` on ``model`` (the task model without PEFT) and
    return ``(peft_model, params)``: ``base_params`` with the saved leaves put in.

    Raises :class:`PeftError` naming every tensor whose shape does not fit this base (or that
    this base has no place for), and the differing model-config fields.
    """
    from jaxbert.peft import build_from_dict

    config, tensors = read_adapter(path)
    method = build_from_dict(config["peft"], model.config)
    pm = PeftModel(model, method)
    abstract = flatten(nn.unbox(jax.eval_shape(lambda r: pm.init(r, **sample_input), jax.random.key(0))["params"]))
    base = flatten(base_params)
    problems = []
    for p, want in sorted(config.get("base_shapes", {}).items()):
        have = shape_of(base[p]) if p in base else None
        if have is None:
            problems.append(f"{p}: the adapter modifies it but this base has no such parameter")
        elif tuple(have) != tuple(want):
            problems.append(f"{p}: adapter made for shape {tuple(want)}, this base has {tuple(have)}")
    for p, t in sorted(tensors.items()):
        if p not in abstract:
            problems.append(f"{p}: in the adapter, but this base model has no such parameter")
        elif tuple(t.shape) != shape_of(abstract[p]):
            problems.append(f"{p}: adapter shape {tuple(t.shape)} vs this base model {shape_of(abstract[p])}")
    missing = sorted(p for p in abstract if method.is_peft_path(p) and p not in tensors)
    if missing:
        problems.append(f"missing from the adapter: {', '.join(missing[:8])}")
    bad_base = [p for p in base if p in abstract and shape_of(base[p]) != shape_of(abstract[p])]
    absent_base = [p for p in abstract if not method.is_peft_path(p) and p not in base]
    if bad_base or absent_base:
        problems.append(f"base params do not fit the model: {', '.join((bad_base + absent_base)[:8])}")
    if problems:
        saved, here = config.get("model", {}), _model_fingerprint(model.config)
        diff = {k: (saved.get(k), here.get(k)) for k in MODEL_FIELDS if saved.get(k) != here.get(k)}
        raise PeftError(f"PEFT checkpoint {path} does not fit this base model"
                        + (f" (config differs, adapter vs base: {diff})" if diff else "") + ":\n  "
                        + "\n  ".join(problems[:20]) + (f"\n  ... ({len(problems)} problems)" if len(problems) > 20 else ""))
    out = {p: jnp.asarray(v) for p, v in base.items() if p in abstract}
    out.update({p: jnp.asarray(t, abstract[p].dtype) for p, t in tensors.items()})
    return pm, unflatten(out)
