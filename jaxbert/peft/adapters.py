"""Bottleneck adapters: Houlsby et al. 2019 (arXiv 1902.00751) and Pfeiffer et al. 2020 (arXiv 2005.00247).

An adapter is ``h + up(act(down(h)))`` with ``down [embed, m]`` and ``up [m, embed]`` (with biases),
inserted through the encoder's extension seam (:mod:`jaxbert.models.layers.extensions`) on a
sub-layer output *before* the residual add and LayerNorm:

* **Houlsby**: after the attention sub-layer (site ``after_attention``, params
  ``encoder/layer_i/adapter_attention/{down,up}``) and after the feed-forward sub-layer (site
  ``after_mlp``, ``encoder/layer_i/adapter_mlp/...``).
* **Pfeiffer**: after the feed-forward sub-layer only (``adapter_mlp``).

Near-identity at init: ``up`` is zero, so every adapter starts as the identity and the model
reproduces the base model exactly; ``down`` is ``N(0, init_std)``.

Options (``config.peft.adapter``): ``bottleneck`` (64), ``activation`` (``relu``; any name in
:mod:`jaxbert.models.layers.activations`), ``init_std`` (1e-2), ``train_layer_norms`` (False;
Houlsby et al. also train the LayerNorms of the base model). Adapters cannot be merged into plain
BERT weights: save them with :func:`jaxbert.peft.checkpoint.save_adapter`.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.activations import ACTIVATIONS
from jaxbert.models.layers.extensions import Extension
from jaxbert.peft.base import PeftError, PeftMethod

LAYER_NORM_REGEX = r"encoder/layer_\d+/(attention_norm|mlp_norm)/"


class BottleneckAdapter(nn.Module):
    """``h -> h + up(act(down(h)))``; ``[b, l, features] -> [b, l, features]``."""

    features: int
    bottleneck: int
    activation: str = "relu"
    init_std: float = 1e-2
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, deterministic: bool = True) -> jax.Array:
        down = nn.Dense(self.bottleneck, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=nn.initializers.normal(self.init_std), name="down")
        up = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=nn.initializers.zeros, name="up")
        return h + up(ACTIVATIONS[self.activation](down(h))).astype(h.dtype)


@dataclasses.dataclass(frozen=True)
class _AdapterExtension(Extension):
    bottleneck: int = 64
    activation: str = "relu"
    init_std: float = 1e-2

    def build(self, config, layer_index, name):
        return BottleneckAdapter(config.hidden_size, self.bottleneck, self.activation, self.init_std,
                                 dtype=config.compute_dtype, param_dtype=config.storage_dtype, name=name)


@dataclasses.dataclass(frozen=True)
class AttentionAdapter(_AdapterExtension):
    """Adapter on the attention sub-layer output (Houlsby's first adapter)."""

    site = "after_attention"
    name = "adapter_attention"


@dataclasses.dataclass(frozen=True)
class MlpAdapter(_AdapterExtension):
    """Adapter on the feed-forward sub-layer output (Houlsby's second, Pfeiffer's only adapter)."""

    site = "after_mlp"
    name = "adapter_mlp"


class _Adapters(PeftMethod):
    section = "adapter"
    DEFAULTS = {"bottleneck": 64, "activation": "relu", "init_std": 1e-2, "train_layer_norms": False}
    default_learning_rate = 1e-3
    mergeable = False
    kinds: tuple = ()

    def validate(self) -> None:
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck <= 0:
            raise PeftError(f"peft.adapter.bottleneck must be a positive int, got {self.bottleneck!r}")
        if self.activation not in ACTIVATIONS:
            raise PeftError(f"peft.adapter.activation={self.activation!r}; known: {sorted(ACTIVATIONS)}")

    def extensions(self):
        return tuple(k(self.bottleneck, self.activation, float(self.init_std)) for k in self.kinds)

    def is_trainable(self, path: str) -> bool:
        return super().is_trainable(path) or (bool(self.train_layer_norms) and bool(re.search(LAYER_NORM_REGEX, path)))


class Houlsby(_Adapters):
    """Adapters after attention and after the FFN of every block."""

    name = "houlsby"
    kinds = (AttentionAdapter, MlpAdapter)


class Pfeiffer(_Adapters):
    """One adapter after the FFN of every block."""

    name = "pfeiffer"
    kinds = (MlpAdapter,)
