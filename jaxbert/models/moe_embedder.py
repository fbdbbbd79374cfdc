"""Mixture-of-experts embedder with enforced routing ("Contrastive Learning and Mixture of Experts
Enables Precise Vector Embeddings"): chosen BERT layers get ``N`` expert FFNs, one per domain.

* Training: every text goes to its record's ``domain`` expert (``domains [b]`` int, from the
  pair data's domain field and the expert table ``contrastive.domains``). The gate is one-hot,
  so an expert's parameters receive gradient only from its own domain's examples (tested).
* Inference: give ``domains`` (known domain), or ``domains = -1`` to use the learned router:
  a linear layer on the mean of the embedding-layer output, trained with cross-entropy against
  the enforced domain (``router_loss``; its input is stop-gradient, so routing never disturbs
  the encoder). Routing is per text (all tokens of a text use one expert).
* Initialisation: :func:`experts_from_dense` copies a pretrained FFN into every expert, so the
  MoE model starts as the dense model; :func:`expert_as_dense` turns expert ``e`` back into a
  plain BERT (an ordinary HF / sentence-transformers export per domain).

Parameter tree: BERT's (:mod:`jaxbert.models.bert.model`), except that in MoE layers ``mlp`` is
replaced by ``mlp_expert_{e}`` (same sub-tree) for ``e < num_experts``, plus
``router/{kernel [embed, E], bias [E]}``. Expert FFNs are all computed and combined with the
gate (``E`` x the FFN compute in MoE layers): simple, exact, and fine for a handful of domains.

PEFT: the MoE block calls the extension sites like the encoder block (adapters, prefixes; soft
prompts after the router), so every PEFT method attaches; an adapter after the MLP sees the gated
expert output and is shared by all domains.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from jaxbert.models.bert.model import BertConfig, BertEmbeddings, EncoderOutput, Pooler
from jaxbert.models.layers import extensions
from jaxbert.models.layers.attention import get_attention_kind, padding_mask
from jaxbert.models.layers.linear import get_dot_general
from jaxbert.models.layers.mlp import Mlp
from jaxbert.models.layers.norms import layer_norm


@dataclasses.dataclass(frozen=True)
class MoEBertConfig(BertConfig):
    """BERT config plus the expert layout. ``moe_layers=()`` means every layer."""

    num_experts: int = 2
    moe_layers: tuple = ()
    router_loss_weight: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        bad = [i for i in self.moe_layers if not 0 <= int(i) < self.num_hidden_layers]
        if bad:
            raise ValueError(f"moe_layers {bad} out of range for {self.num_hidden_layers} layers")

    @property
    def expert_layers(self) -> tuple[int, ...]:
        if not self.moe_layers:
            return tuple(range(self.num_hidden_layers))
        return tuple(sorted(int(i) for i in self.moe_layers))

    def dense_config(self) -> BertConfig:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(BertConfig)}
        return BertConfig(**fields)


class MoEBertLayer(nn.Module):
    """BERT's post-norm block with the FFN replaced by gated experts in the expert layers.

    ``x [b, l, embed]``, ``mask [b, 1, 1, l]`` bool, ``gates [b, num_experts]`` (one-hot) ->
    ``[b, l, embed]``. The extension sites are called once each, as in the encoder block
    (:mod:`jaxbert.models.layers.extensions`): ``attention_kv`` into the attention,
    ``after_attention`` / ``after_mlp`` on each sub-layer output before its residual; the MLP
    site sees the gated sum of the experts, so an adapter is shared by every domain.
    """

    config: MoEBertConfig
    layer_index: int = 0

    @nn.compact
    def __call__(self, x, mask, gates, deterministic: bool = True):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.storage_dtype
        dot_general = get_dot_general(cfg.dot_general)
        kv_prefix = extensions.prefix_kv(cfg, self.layer_index, x.shape[0], dt)
        h = get_attention_kind(cfg.attention_kind)(
            num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim, dropout_rate=cfg.attention_probs_dropout_prob,
            use_bias=cfg.attention_bias, initializer_range=cfg.initializer_range,
            implementation=cfg.attention_implementation, dtype=dt, param_dtype=pdt, qkv_layout=cfg.qkv_layout,
            dot_general=dot_general, name="attention")(
                x, mask=mask, deterministic=deterministic, kv_prefix=kv_prefix)
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        h = extensions.apply_site(cfg, "after_attention", self.layer_index, h, deterministic)
        x = layer_norm(cfg.layer_norm_eps, dt, pdt, "attention_norm")(x + h)
        mlp = lambda name: Mlp(cfg.intermediate_size, activation=cfg.hidden_act,  # noqa: E731
                               use_bias=cfg.mlp_in_bias, initializer_range=cfg.initializer_range, dtype=dt,
                               param_dtype=pdt, dot_general=dot_general, name=name)
        if self.layer_index in cfg.expert_layers:
            h = sum(gates[:, e, None, None].astype(dt) * mlp(f"mlp_expert_{e}")(x) for e in range(cfg.num_experts))
        else:
            h = mlp("mlp")(x)
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        h = extensions.apply_site(cfg, "after_mlp", self.layer_index, h, deterministic)
        x = layer_norm(cfg.layer_norm_eps, dt, pdt, "mlp_norm")(x + h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class MoEBertModel(nn.Module):
    """BERT backbone with expert FFNs; ``domains [b]`` int (``-1``: the router decides)."""

    config: MoEBertConfig

    def setup(self):
        cfg = self.config
        self.embeddings = BertEmbeddings(cfg)
        self.layers = [MoEBertLayer(cfg, i, name=f"layer_{i}") for i in range(cfg.num_hidden_layers)]
        self.router = nn.Dense(cfg.num_experts, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name="router")
        self.embedding_extensions = extensions.embedding_modules(cfg)
        if cfg.add_pooling_layer:
            self.pooler = Pooler(cfg)

    def _embed(self, input_ids, attention_mask, token_type_ids, deterministic):
        b, l = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, l), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, l), jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        return self.embeddings(input_ids, token_type_ids, positions, deterministic), attention_mask

    def route(self, input_ids, attention_mask=None, token_type_ids=None):
        """Router logits ``[b, num_experts]`` from the (stop-gradient) mean embedding-layer output."""
        x, attention_mask = self._embed(input_ids, attention_mask, token_type_ids, True)
        m = attention_mask[..., None].astype(jnp.float32)
        pooled = jax.lax.stop_gradient((x.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0))
        return self.router(pooled)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, domains=None) -> EncoderOutput:
        cfg = self.config
        b = input_ids.shape[0]
        x, attention_mask = self._embed(input_ids, attention_mask, token_type_ids, deterministic)
        logits = self.route(input_ids, attention_mask, token_type_ids)  # also creates the router params
        if domains is None:
            domains = jnp.full((b,), -1, jnp.int32)
        chosen = jnp.where(domains >= 0, domains, jnp.argmax(logits, -1))
        gates = jax.nn.one_hot(chosen, cfg.num_experts, dtype=jnp.float32)
        # soft prompts (after routing: the router reads the text's own tokens) may lengthen x and the mask
        x, attention_mask = extensions.apply_embeddings(self.embedding_extensions, x, attention_mask, deterministic)
        mask = padding_mask(attention_mask)
        for layer in self.layers:
            x = layer(x, mask, gates, deterministic)
        pooled = self.pooler(x) if cfg.add_pooling_layer else None
        return EncoderOutput(last_hidden_state=x, pooler_output=pooled)


def experts_from_dense(dense_params: dict, config: MoEBertConfig) -> dict:
    """MoE params from dense BERT params: each MoE layer's ``mlp`` copied into every expert."""
    out = {}
    for name, sub in dense_params.items():
        if name.startswith("layer_") and int(name.split("_")[1]) in config.expert_layers:
            layer = {k: v for k, v in sub.items() if k != "mlp"}
            if "mlp" not in sub:
                raise KeyError(f"dense params {name} have no 'mlp' to copy into the experts")
            for e in range(config.num_experts):
                layer[f"mlp_expert_{e}"] = jax.tree.map(lambda a: a, sub["mlp"])
            out[name] = layer
        else:
            out[name] = sub
    out["router"] = {"kernel": jnp.zeros((config.hidden_size, config.num_experts), jnp.float32),
                     "bias": jnp.zeros((config.num_experts,), jnp.float32)}
    return out


def expert_as_dense(moe_params: dict, config: MoEBertConfig, expert: int) -> tuple[dict, BertConfig]:
    """Plain BERT params (and config) that compute exactly what the MoE model does for ``expert``."""
    if not 0 <= expert < config.num_experts:
        raise ValueError(f"expert {expert} out of range for {config.num_experts} experts")
    out = {}
    for name, sub in moe_params.items():
        if name == "router":
            continue
        if name.startswith("layer_") and f"mlp_expert_{expert}" in sub:
            layer = {k: v for k, v in sub.items() if not k.startswith("mlp_expert_")}
            layer["mlp"] = sub[f"mlp_expert_{expert}"]
            out[name] = layer
        else:
            out[name] = sub
    return out, config.dense_config()


def moe_backbone(config: BertConfig, dense_params: dict | None, *, num_experts: int, layers: tuple = (),
                 router: str = "learned", router_loss_weight: float = 0.1, seed: int = 0):
    """``(MoEBertModel, MoEBertConfig, params or None)`` from a dense BERT config (and params)."""
    if type(config) is not BertConfig and not isinstance(config, MoEBertConfig):
        raise ValueError(f"the MoE embedder wraps BERT backbones; got {type(config).__name__}")
    if router != "learned":
        raise ValueError(f"moe.router={router!r}; only 'learned' is implemented (pass domains to force an expert)")
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(BertConfig)}
    cfg = MoEBertConfig(**fields, num_experts=num_experts, moe_layers=tuple(layers),
                        router_loss_weight=router_loss_weight)
    params = None if dense_params is None else experts_from_dense(dense_params, cfg)
    return MoEBertModel, cfg, params


def router_loss(model: nn.Module, params: dict, inputs: dict, domains: jax.Array) -> jax.Array:
    """``router_loss_weight * CE(router logits, domain)`` over every text of a ``[B, K, L]`` batch."""
    ids = inputs["input_ids"]
    b, k, l = ids.shape
    flat = [inputs[key].reshape(b * k, l) for key in ("input_ids", "attention_mask", "token_type_ids")]
    logits = model.apply({"params": params}, *flat, method=lambda m, *a: m.encoder.route(*a))
    labels = jnp.repeat(domains, k)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return model.config.router_loss_weight * ce
