"""Prefix tuning (Li & Liang 2021, arXiv 2101.00190): trained virtual keys/values in every layer.

Each attention layer gets ``length`` virtual key/value vectors ``[length, heads, head_dim]``
(params ``encoder/layer_i/prefix/{key,value}``), prepended to the layer's keys and values through
the encoder's ``attention_kv`` extension site; every query may attend to them, the real tokens'
positions and outputs are otherwise untouched. ``length=0`` reproduces the base model exactly.

**Reparameterisation** (``reparameterize=True``, Li & Liang's MLP, as peft's ``prefix_projection``):
the per-layer prefixes are not stored; a shared embedding ``P [length, hidden]`` passes through
``Linear(hidden -> mlp_hidden) -> tanh -> Linear(mlp_hidden -> layers * 2 * hidden)`` (params under
``prefix_encoder/``), and :meth:`PrefixTuning.materialize` writes the resulting keys/values into
the per-layer ``prefix`` params before ``model.apply`` -- a function on the param tree, the model
does not know. After training the MLP can be dropped: :meth:`PrefixTuning.compact` evaluates it.

Options (``config.peft.prefix``): ``length`` (16), ``reparameterize`` (False), ``mlp_hidden`` (512),
``init_std`` (0.02 for the direct prefixes and the MLP kernels).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.extensions import Extension
from jaxbert.peft.base import PeftError, PeftMethod, flatten, num_layers, unflatten

ENCODER = "prefix_encoder"


class PrefixKV(nn.Module):
    """``(batch, dtype) -> (k, v)`` each ``[batch, length, heads, head_dim]``."""

    length: int
    heads: int
    head_dim: int
    init_std: float = 0.02
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, batch: int, dtype):
        shape = (self.length, self.heads, self.head_dim)
        init = nn.initializers.normal(self.init_std)
        k = self.param("key", init, shape, self.param_dtype)
        v = self.param("value", init, shape, self.param_dtype)
        expand = lambda t: jnp.broadcast_to(t.astype(dtype)[None], (batch,) + shape)
        return expand(k), expand(v)


@dataclasses.dataclass(frozen=True)
class PrefixExtension(Extension):
    site = "attention_kv"
    name = "prefix"
    length: int = 16
    init_std: float = 0.02

    def build(self, config, layer_index, name):
        return PrefixKV(self.length, config.num_attention_heads, config.head_dim, self.init_std,
                        param_dtype=config.storage_dtype, name=name)


class PrefixTuning(PeftMethod):
    """Trained per-layer key/value prefixes (optionally produced by a shared MLP)."""

    name = "prefix"
    section = "prefix"
    DEFAULTS = {"length": 16, "reparameterize": False, "mlp_hidden": 512, "init_std": 0.02}
    default_learning_rate = 1e-2
    mergeable = False
    extra_leaf_names = (ENCODER,)

    def validate(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 0:
            raise PeftError(f"peft.prefix.length must be an int >= 0, got {self.length!r}")
        if self.reparameterize and (not isinstance(self.mlp_hidden, int) or self.mlp_hidden <= 0):
            raise PeftError(f"peft.prefix.mlp_hidden must be a positive int, got {self.mlp_hidden!r}")

    def extensions(self):
        return (PrefixExtension(self.length, float(self.init_std)),)

    def _dims(self, flat):
        cfg = self.model_config
        return num_layers(flat), cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size

    def init(self, rng, params):
        if not self.reparameterize:
            return params
        flat = flatten(params)
        layers, h, d, e = self._dims(flat)
        # The per-layer prefixes are produced by the MLP; they are not stored.
        flat = {p: v for p, v in flat.items() if "/prefix/" not in p}
        k = jax.random.split(rng, 3)
        std = float(self.init_std)
        flat[f"{ENCODER}/embedding"] = std * jax.random.normal(k[0], (self.length, e))
        flat[f"{ENCODER}/dense_in/kernel"] = std * jax.random.normal(k[1], (e, self.mlp_hidden))
        flat[f"{ENCODER}/dense_in/bias"] = jnp.zeros((self.mlp_hidden,))
        flat[f"{ENCODER}/dense_out/kernel"] = std * jax.random.normal(k[2], (self.mlp_hidden, layers * 2 * h * d))
        flat[f"{ENCODER}/dense_out/bias"] = jnp.zeros((layers * 2 * h * d,))
        return unflatten(flat)

    def materialize(self, params, rng=None, deterministic=True):
        if not self.reparameterize:
            return params
        flat = flatten(params)
        enc = {p[len(ENCODER) + 1:]: flat.pop(p) for p in list(flat) if p.startswith(ENCODER + "/")}
        layers, h, d, _ = self._dims(flat)
        hid = jnp.tanh(jnp.matmul(jnp.asarray(enc["embedding"]), enc["dense_in/kernel"]) + enc["dense_in/bias"])
        kv = (jnp.matmul(hid, enc["dense_out/kernel"]) + enc["dense_out/bias"]).reshape(self.length, layers, 2, h, d)
        root = "encoder/" if any(p.startswith("encoder/") for p in flat) else ""
        for i in range(layers):
            flat[f"{root}layer_{i}/prefix/key"] = kv[:, i, 0]
            flat[f"{root}layer_{i}/prefix/value"] = kv[:, i, 1]
        return unflatten(flat)

    def compact(self, params):
        """Params with the MLP evaluated into per-layer prefixes (for inference / smaller files)."""
        return self.materialize(params)
