"""BERT (Devlin et al. 2019) on the configurable encoder block, numerically matching ``transformers.BertModel``.

BERT is not implemented here a second time: :class:`BertConfig` is the BERT-flavoured
:class:`~jaxbert.models.transformer.model.EncoderConfig` (post-norm LayerNorm with bias, learned
absolute positions, token types, GELU MLP, separate q/k/v, a pooler, the [CLS]-only last block)
plus the mapping to and from a HF ``BertConfig`` dict, and the backbone is the shared
:class:`~jaxbert.models.transformer.model.Encoder` (``BertModel`` is that class).

Parameter tree of a BERT backbone (``L`` layers, ``H`` heads, ``D = hidden/H``)::

    embeddings/word_embeddings/embedding        [vocab, embed]
    embeddings/position_embeddings/embedding    [max_position, embed]
    embeddings/token_type_embeddings/embedding  [type_vocab, embed]
    embeddings/norm/{scale,bias}                [embed]
    layer_{i}/attention/{query,key,value}/kernel [embed, H, D]   bias [H, D]
    layer_{i}/attention/out/kernel              [H, D, embed]    bias [embed]
    layer_{i}/attention_norm/{scale,bias}       [embed]
    layer_{i}/mlp/wi/kernel [embed, mlp]  wi/bias [mlp]  wo/kernel [mlp, embed]  wo/bias [embed]
    layer_{i}/mlp_norm/{scale,bias}             [embed]
    pooler/dense/{kernel [embed, embed], bias}  (when ``add_pooling_layer``)

Layers are unrolled (``layer_0`` ... ``layer_{L-1}``) rather than scanned so that per-layer
regexes (freezing, layer-wise learning-rate decay, PEFT targets) address them directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxbert.models.transformer.model import (DTYPES, Encoder, EncoderBlock, EncoderConfig, EncoderEmbeddings,
                                              EncoderOutput, Pooler, segment_positions)

__all__ = ["BertConfig", "BertModel", "bert_config", "BertLayer", "BertEmbeddings", "EncoderOutput", "Pooler",
           "segment_positions", "DTYPES"]


@dataclasses.dataclass(frozen=True)
class BertConfig(EncoderConfig):
    """The BERT flavour of :class:`EncoderConfig`; field names follow ``transformers.BertConfig``.

    Only the defaults differ from the generic config (a pooler, the [CLS]-only last block,
    ``model_type="bert"``); every block switch keeps its BERT value. ``dtype`` is the compute
    dtype and ``param_dtype`` the storage dtype of parameters (strings, so the config serialises
    to JSON); ``attention_implementation`` picks the attention kernel (see
    :func:`jaxbert.models.layers.attention.dot_product_attention`).
    """

    add_pooling_layer: bool = True
    first_token_shortcut: bool = True
    model_type: str = "bert"

    def __post_init__(self):
        super().__post_init__()
        if self.model_type != "bert":
            raise ValueError(f"BertConfig has model_type='bert', got {self.model_type!r} (use EncoderConfig)")

    # Fields of a HF config.json that this class reads; anything else is ignored.
    HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps",
                 "pad_token_id", "classifier_dropout")

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> "BertConfig":
        """Build from a HF ``config.json`` dict (``model_type`` must be a BERT-compatible type)."""
        model_type = hf.get("model_type", "bert")
        if model_type not in ("bert",):
            raise ValueError(f"config has model_type={model_type!r}; BertConfig reads only 'bert' configs")
        pet = hf.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(f"position_embedding_type={pet!r} is not supported (only 'absolute')")
        kwargs = {k: hf[k] for k in cls.HF_FIELDS if k in hf}
        if kwargs.get("pad_token_id") is None:  # some configs write null
            kwargs["pad_token_id"] = 0
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers.BertConfig`` reads."""
        out = {k: getattr(self, k) for k in self.HF_FIELDS}
        out.update(model_type="bert", position_embedding_type="absolute", architectures=["BertModel"])
        return out


def bert_config(**kw: Any) -> BertConfig:
    """A BERT config (``bert-base`` shape unless overridden)."""
    return BertConfig(**kw)


# The shared modules under their BERT names (the same objects, not copies).
BertModel = Encoder
BertLayer = EncoderBlock
BertEmbeddings = EncoderEmbeddings
