"""Bi-encoder for sentence embeddings: a backbone (under ``encoder/``) + pooling, and an optional
pair classifier over ``[u, v, |u - v|]`` (SBERT's softmax loss, DSE's student head).

Parameter tree::

    encoder/...                        the backbone's params (BertModel, Encoder, MoE backbone)
    pair_classifier/{kernel, bias}     [features * hidden, num_labels] (only when num_labels > 0)

``__call__(input_ids, attention_mask, token_type_ids) -> [b, hidden]`` float32 pooled vectors
(not normalised: the losses use cosine similarity; exported models add ``Normalize`` if asked).
Backbones that take extra inputs (the MoE embedder's ``domains``) receive them through
``**backbone_kwargs``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.pooling import pool

PAIR_FEATURES = ("u", "v", "abs_diff", "mul")


def pair_features(u: jax.Array, v: jax.Array, features: Sequence[str] = ("u", "v", "abs_diff")) -> jax.Array:
    """SBERT's classifier input: concatenation of ``u``, ``v``, ``|u - v|``, ``u * v`` (as chosen)."""
    unknown = [f for f in features if f not in PAIR_FEATURES]
    if unknown or not features:
        raise ValueError(f"pair features {list(features)} invalid; choose from {list(PAIR_FEATURES)}")
    parts = {"u": lambda: u, "v": lambda: v, "abs_diff": lambda: jnp.abs(u - v), "mul": lambda: u * v}
    return jnp.concatenate([parts[f]().astype(jnp.float32) for f in features], axis=-1)


class SentenceEmbedder(nn.Module):
    config: Any
    backbone: Any
    pooling: tuple[str, ...] = ("mean",)
    num_labels: int = 0
    features: tuple[str, ...] = ("u", "v", "abs_diff")

    def setup(self):
        self.encoder = self.backbone(self.config)
        if self.num_labels:
            self.pair_classifier = nn.Dense(self.num_labels, dtype=jnp.float32, name="pair_classifier")

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True,
                 **backbone_kwargs):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        out = self.encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic,
                           **backbone_kwargs)
        emb = pool(out.last_hidden_state, attention_mask, self.pooling)
        if self.num_labels and self.is_initializing():  # create the head's params at init
            self.pair_logits(emb[:1], emb[:1])
        return emb

    def pair_logits(self, u, v):
        """Classifier logits ``[b, num_labels]`` of the pair features of ``u``, ``v`` ``[b, dim]``."""
        if not self.num_labels:
            raise ValueError("this SentenceEmbedder has no pair classifier (num_labels=0)")
        return self.pair_classifier(pair_features(u, v, self.features))
