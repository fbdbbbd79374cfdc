"""Monarch Mixer BERT (M2-BERT; Fu et al. 2023, arXiv 2310.12109): attention-free, MLP-free encoder.

Each block replaces attention by a **gated bidirectional long convolution** and the dense MLP by
a **block-diagonal (Monarch) GLU**, as ``bert/src/bert_layers.py`` + ``bert/src/mm/`` of
HazyResearch/m2 do::

    # sequence mixer (MonarchMixerSequenceMixing), u [b, L, d]
    x1, x2, v = split(short_conv3(in_linear(u)))                 # d -> 3d, causal depthwise conv, width 3
    y  = long_conv(v * x1; filter_fn) * x2                       # implicit Hyena filter, FFT, bidirectional, + D (v*x1)
    y += long_conv(u; filter_fn2)                                # residual long convolution (residual_long_conv)
    h  = out_linear(y)                                           # d -> d
    # state mixer (BertGatedLinearUnitMLP with BlockdiagLinear, nblocks=4)
    g, n = split(blockdiag(h) [2 m])                             # no bias
    x  = LayerNorm(blockdiag(gelu(g) * n) + b + h)               # post-LN, residual from the mixer output

As in the reference there is no residual connection or norm around the sequence mixer (the
residual long convolution plays that role) and the block's only norm is the MLP's post-LN.
Embeddings (word + learned positions + token type, LayerNorm, dropout), pooler and task heads are
jaxbert's BERT ones, so ``EncoderFor*`` wrappers, the MLM task and the classification task use
this backbone unchanged (``model.preset=m2-bert-80m``).

**Padding.** A convolution has no attention mask: every output mixes its neighbours, so pad
tokens would leak into real ones through the short convolution (from the left) and the
bidirectional long convolution (from both sides), and the outputs would depend on how much a
batch is padded. The reference runs padded and does not mask. Here the mixer zeroes pad
positions wherever a convolution reads them: the short convolution's input, the gated value
``v * x1`` before the long convolution, and the residual convolution's input. Because filter
taps depend only on the offset (never on ``L``) and the FFT is zero-padded to ``2L``, the outputs
at real positions of a right-padded row equal those of the unpadded sequence (up to float
rounding); ``last_hidden_state`` is zero at pad positions. Packed rows (``segment_ids``) are not
supported: a convolution over a packed row would mix documents.

Parameter tree (``L`` layers, ``d`` hidden, ``m`` intermediate, ``k`` blocks, ``o`` filter order,
``e`` hyena_emb_dim)::

    embeddings/{word,position,token_type}_embeddings/embedding, embeddings/norm/{scale,bias}
    layer_{i}/mixer/in_linear/{kernel [d, 3, d], bias [3, d]}
    layer_{i}/mixer/short_conv/{kernel [3, 3, d], bias [3, d]}
    layer_{i}/mixer/filter_fn/{act/freq [o], bias [d],
                               implicit_filter{,_rev}/{in_proj [e, o], inner_0, inner_1 [o, o], out_proj [o, d]}}
    layer_{i}/mixer/filter_fn2/...                               (residual_long_conv)
    layer_{i}/mixer/out_linear/{kernel [d, d], bias [d]}
    layer_{i}/mixer/norm/{scale,bias}                            (hyena_training_additions)
    layer_{i}/mlp/gated_layers/kernel [k, d/k, 2m/k]             (mlp_linear="blockdiag"; no bias)
    layer_{i}/mlp/wo/{kernel [k, m/k, d/k], bias [d]}
    layer_{i}/mlp_norm/{scale,bias}
    pooler/dense/{kernel,bias}                                   (add_pooling_layer)

Logical axes: the mixer's channel axis is named ``mlp`` (sharded over ``tensor`` by the default
rules): everything between ``in_linear`` and ``out_linear`` is per-channel, so the mixer is
column-parallel in, row-parallel out, like a Megatron MLP.

Reference checkpoints: :func:`params_from_reference` maps a HazyResearch/m2 state dict (the
``danfu09/m2-bert-*`` / ``togethercomputer/m2-bert-*`` layouts) to these params; a test runs a
torch transcription of the reference forward on the same weights (max abs diff ~1e-5).
``jaxbert/convert/m2.py`` holds the regex key table to the reference's names: the MLM task
exports M2 as ``model.safetensors`` + ``config.json`` + tokenizer (reference key names; the
reference's ``load_state_dict(strict=False)`` takes it), and ``load_pretrained`` /
``model.init_from`` read it back; :func:`load_exported` reads such an export (and the older
``params.msgpack`` form).

Initialisation follows the reference after ``post_init`` (dense layers and embeddings
``Normal(0, initializer_range)``, block-diagonal layers ``U(+-1/sqrt(block fan-in))``, filters as
in :mod:`jaxbert.models.layers.hyena`), except that the pad token's embedding row is not zeroed.

Filter hyper-parameters have their own learning rate / weight decay in the reference
(``long_conv_kernel_learning_rate=1e-3``, ``hyena_wd=0.1``); with jaxbert's optimizer that is a
path-regex group on ``.*/filter_fn2?/.*`` (see ``experiments/configs/m2_pretrain.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax.core import meta

from jaxbert.models.config_base import ConfigMixin, check_choice, check_execution_fields
from jaxbert.models.layers import extensions
from jaxbert.models.layers.activations import get_activation
from jaxbert.models.layers.hyena import HyenaFilter, ShortConv
from jaxbert.models.layers.linear import DenseND
from jaxbert.models.layers.monarch import BlockdiagLinear, MonarchLinear
from jaxbert.models.layers.norms import layer_norm
from jaxbert.models.layers.stack import block_stack
from jaxbert.models.transformer.model import EncoderEmbeddings, EncoderOutput, Pooler

MLP_LINEARS = ("blockdiag", "monarch", "dense")


@dataclasses.dataclass(frozen=True)
class M2Config(ConfigMixin):
    """Hyper-parameters of an M2-BERT encoder; names follow the reference's ``BertConfig`` extensions.

    BERT fields (``vocab_size``, ``hidden_size``, ``hidden_act``, dropout, ``layer_norm_eps``, ...)
    keep their ``transformers.BertConfig`` names, so heads, task wrappers and the engine use this
    config like a BERT one. ``long_conv_l_max`` (None: ``max_position_embeddings``) only scales
    the filters' positional features; sequences of any length run (up to
    ``max_position_embeddings``, the learned position table).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    max_position_embeddings: int = 128
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    add_pooling_layer: bool = True
    # -- sequence mixer (MonarchMixerSequenceMixing)
    long_conv_l_max: int | None = None
    bidirectional: bool = True
    residual_long_conv: bool = True
    short_conv_size: int = 3
    hyena_w: float = 10.0
    hyena_w_mod: float = 1.0
    hyena_emb_dim: int = 5
    hyena_filter_order: int = 128
    hyena_num_inner_mlps: int = 2
    hyena_modulate: bool = True
    hyena_filter_bias: bool = True
    hyena_training_additions: bool = False  # LayerNorm at the mixer input (the legacy 80M checkpoint)
    # -- state mixer
    use_glu_mlp: bool = True
    mlp_linear: str = "blockdiag"  # "blockdiag" (reference), "monarch" (full B P B P product), "dense"
    monarch_mlp_nblocks: int = 4
    # -- execution
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    extensions: tuple = ()
    model_type: str = "m2_bert"

    def __post_init__(self):
        check_execution_fields(self)
        check_choice("mlp_linear", self.mlp_linear, MLP_LINEARS)
        if self.hyena_emb_dim < 3 or self.hyena_emb_dim % 2 == 0:
            raise ValueError(f"hyena_emb_dim must be odd and >= 3 (time, cosine and sine bands), got "
                             f"{self.hyena_emb_dim}")
        if self.filter_l_max < 2:
            raise ValueError(f"long_conv_l_max must be >= 2, got {self.filter_l_max}")
        if self.short_conv_size < 1 or self.monarch_mlp_nblocks < 1:
            raise ValueError("short_conv_size and monarch_mlp_nblocks must be >= 1")
        extensions.refuse_sites(self, ("attention_kv",), "it adds attention keys/values (prefix tuning); M2 has "
                                "no attention. Use adapters, LoRA-free methods or soft prompts instead.")

    # The embedding fields of the shared EncoderEmbeddings: M2's embeddings are BERT's.
    position_embedding_type = "absolute"
    embedding_norm = True
    norm_type = "layernorm"
    norm_bias = True
    low_precision_norm = False
    embedding_dropout_prob = None

    @property
    def filter_l_max(self) -> int:
        return self.max_position_embeddings if self.long_conv_l_max is None else self.long_conv_l_max

    def replace(self, **changes: Any) -> "M2Config":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            hints = {u: difflib.get_close_matches(u, names, n=2) for u in unknown}
            raise ValueError(f"M2Config has no field(s) {unknown} (close: {hints}); M2 has no attention, so "
                             "attention options do not apply")
        return dataclasses.replace(self, **changes)

    # -- config.json in the reference's names (HazyResearch/m2 ``configuration_bert.BertConfig``)
    HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "hidden_act",
                 "hidden_dropout_prob", "max_position_embeddings", "type_vocab_size", "initializer_range",
                 "layer_norm_eps", "pad_token_id", "classifier_dropout", "bidirectional", "residual_long_conv",
                 "hyena_w", "hyena_w_mod", "hyena_emb_dim", "hyena_filter_order", "hyena_training_additions",
                 "use_glu_mlp", "monarch_mlp_nblocks")
    # jaxbert-only architecture fields (no reference equivalent), kept under ``config.json["jaxbert_m2"]``.
    JAXBERT_FIELDS = ("hyena_num_inner_mlps", "hyena_modulate", "hyena_filter_bias", "mlp_linear")
    # The reference's ``BertConfig`` defaults, used for keys a foreign config.json leaves out.
    REFERENCE_DEFAULTS = {"use_glu_mlp": True, "use_monarch_mlp": False, "monarch_mlp_nblocks": 4,
                          "residual_long_conv": False, "bidirectional": True, "hyena_w_mod": 1,
                          "hyena_filter_order": 64, "hyena_training_additions": False,
                          "max_position_embeddings": 512}

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict in the reference's vocabulary (``model_type="m2_bert"``).

        ``long_conv_l_max`` is always written as a number (the filters' time scale), so enlarging
        ``max_position_embeddings`` when loading never changes the filters. Execution settings
        (``dtype``, ``param_dtype``, ``remat``, ``extensions``, ``add_pooling_layer``) are not written.
        """
        if self.extensions:
            raise ValueError("an M2 config with extensions has no config.json form; export the merged base model")
        out: dict[str, Any] = {k: getattr(self, k) for k in self.HF_FIELDS}
        out.update(model_type="m2_bert", architectures=["BertModel"], monarch_mixer_sequence_mixing=True,
                   use_positional_encodings=True, long_conv_l_max=self.filter_l_max,
                   use_monarch_mlp=self.mlp_linear == "blockdiag", pool_all=False, use_flash_mm=False,
                   use_flash_fft=False, jaxbert_m2={k: getattr(self, k) for k in self.JAXBERT_FIELDS})
        return out

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> "M2Config":
        """Build from a ``config.json`` dict: a jaxbert M2 export (``model_type="m2_bert"``) or a reference
        config (``model_type="bert"`` with ``monarch_mixer_sequence_mixing: true``)."""
        model_type = hf.get("model_type")
        if model_type not in ("m2_bert", "bert"):
            raise ValueError(f"config has model_type={model_type!r}; M2Config reads 'm2_bert' (or a reference 'bert' "
                             "config with monarch_mixer_sequence_mixing=true)")
        if not hf.get("monarch_mixer_sequence_mixing", model_type == "m2_bert"):
            raise ValueError("config has monarch_mixer_sequence_mixing=false: an attention BERT, not Monarch Mixer")
        if not hf.get("use_positional_encodings", True):
            raise ValueError("config has use_positional_encodings=false; jaxbert's M2 always has learned positions")
        if hf.get("pool_all"):
            raise ValueError("config has pool_all=true (mean-pooling pooler); jaxbert's M2 pooler reads [CLS]")
        get = lambda k: hf[k] if k in hf else cls.REFERENCE_DEFAULTS[k]
        kwargs: dict[str, Any] = {}
        for k in cls.HF_FIELDS:
            if k in hf:
                kwargs[k] = hf[k]
            elif k in cls.REFERENCE_DEFAULTS:
                kwargs[k] = cls.REFERENCE_DEFAULTS[k]
        for k in ("long_conv_l_max", "hyena_w", "hyena_emb_dim"):  # no reference default: from the yaml
            if k not in hf:
                raise ValueError(f"M2 config.json has no {k!r} (the reference sets it in the training yaml)")
        kwargs["long_conv_l_max"] = int(hf["long_conv_l_max"])
        if kwargs.get("pad_token_id") is None:
            kwargs["pad_token_id"] = 0
        extra = dict(hf.get("jaxbert_m2") or {})
        unknown = sorted(set(extra) - set(cls.JAXBERT_FIELDS))
        if unknown:
            raise ValueError(f"config.json jaxbert_m2 has unknown field(s) {unknown}; known: {cls.JAXBERT_FIELDS}")
        if "mlp_linear" not in extra:
            extra["mlp_linear"] = "blockdiag" if get("use_monarch_mlp") else "dense"
        kwargs.update(extra)
        cfg = cls(**kwargs)
        return cfg.replace(**overrides) if overrides else cfg


# ----------------------------------------------------------------------------- modules


def _masked(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Zero ``x [b, L, ...]`` where ``mask [b, L]`` is False."""
    if mask is None:
        return x
    return x * mask.reshape(mask.shape + (1,) * (x.ndim - 2)).astype(x.dtype)


class MonarchMixerSequenceMixer(nn.Module):
    """The gated bidirectional long-convolution sequence mixer. ``u [b, L, d] -> [b, L, d]``."""

    config: M2Config

    def _filter(self, name: str) -> HyenaFilter:
        cfg = self.config
        return HyenaFilter(channels=cfg.hidden_size, l_max=cfg.filter_l_max, order=cfg.hyena_filter_order,
                           emb_dim=cfg.hyena_emb_dim, w=cfg.hyena_w, w_mod=cfg.hyena_w_mod,
                           num_inner_mlps=cfg.hyena_num_inner_mlps, bidirectional=cfg.bidirectional,
                           modulate=cfg.hyena_modulate, use_bias=cfg.hyena_filter_bias,
                           initializer_range=cfg.initializer_range, param_dtype=cfg.storage_dtype, name=name)

    @nn.compact
    def __call__(self, u: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        d, dt, pdt = cfg.hidden_size, cfg.compute_dtype, cfg.storage_dtype
        if cfg.hyena_training_additions:
            u = layer_norm(1e-5, dt, pdt, "norm")(u)
        u_orig = u
        h = DenseND(features=(3, d), kernel_axes=("embed", None, "mlp"), bias_axes=(None, "mlp"),
                    initializer_range=cfg.initializer_range, dtype=dt, param_dtype=pdt, name="in_linear")(u)
        h = nn.with_logical_constraint(h, ("batch", "length", None, "mlp"))
        h = ShortConv(cfg.short_conv_size, (None, "mlp"), dt, pdt, name="short_conv")(_masked(h, mask))
        x1, x2, v = h[..., 0, :], h[..., 1, :], h[..., 2, :]
        v = _masked(v * x1, mask)
        y = self._filter("filter_fn")(v) * x2
        if cfg.residual_long_conv:
            y = y + self._filter("filter_fn2")(_masked(u_orig, mask))
        y = nn.with_logical_constraint(y, ("batch", "length", "mlp"))
        return DenseND(features=(d,), kernel_axes=("mlp", "embed"), bias_axes=("embed",),
                       initializer_range=cfg.initializer_range, dtype=dt, param_dtype=pdt, name="out_linear")(y)


class MonarchMlp(nn.Module):
    """Monarch GLU (``use_glu_mlp``) or plain MLP with block-diagonal / Monarch / dense linears.

    Returns the MLP output before the residual add and norm (the block does those).
    """

    config: M2Config

    def _linear(self, features: int, use_bias: bool, axes: tuple, name: str) -> nn.Module:
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.storage_dtype
        if cfg.mlp_linear == "blockdiag":
            return BlockdiagLinear(features, cfg.monarch_mlp_nblocks, use_bias, axes, dt, pdt, name=name)
        if cfg.mlp_linear == "monarch":
            return MonarchLinear(features, cfg.monarch_mlp_nblocks, use_bias, axes, dt, pdt, name=name)
        return DenseND(features=(features,), kernel_axes=axes, bias_axes=(axes[1],), use_bias=use_bias,
                       initializer_range=cfg.initializer_range, dtype=dt, param_dtype=pdt, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        m = cfg.intermediate_size
        act = get_activation(cfg.hidden_act)
        if cfg.use_glu_mlp:
            h = self._linear(2 * m, False, ("embed", "mlp"), "gated_layers")(x)
            h = act(h[..., :m]) * h[..., m:]
        else:
            h = act(self._linear(m, False, ("embed", "mlp"), "gated_layers")(x))
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        return self._linear(x.shape[-1], True, ("mlp", "embed"), "wo")(h)


class M2Block(nn.Module):
    """One M2-BERT layer: ``h = mixer(x); x = LN(h + mlp(h))`` (extension sites after each sub-layer)."""

    config: M2Config
    layer_index: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        h = MonarchMixerSequenceMixer(cfg, name="mixer")(x, mask)
        h = extensions.apply_site(cfg, "after_attention", self.layer_index, h, deterministic)
        out = MonarchMlp(cfg, name="mlp")(h, deterministic)
        out = extensions.apply_site(cfg, "after_mlp", self.layer_index, out, deterministic)
        x = layer_norm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.storage_dtype, "mlp_norm")(out + h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class M2Model(nn.Module):
    """The M2-BERT backbone: BERT embeddings, ``num_hidden_layers`` :class:`M2Block`, optional pooler.

    Same call as :class:`jaxbert.models.transformer.model.Encoder` (``input_ids [b, l]``, optional
    ``attention_mask``, ``token_type_ids``, ``position_ids``); no ``segment_ids`` (see the module
    docstring on padding). Returns :class:`~jaxbert.models.transformer.model.EncoderOutput` with zeros at pad
    positions of ``last_hidden_state``.
    """

    config: M2Config

    def setup(self):
        cfg = self.config
        self.embeddings = EncoderEmbeddings(cfg)
        self.layers = block_stack(M2Block, cfg, remat_static_argnums=(3,))
        self.embedding_extensions = extensions.embedding_modules(cfg)
        if cfg.add_pooling_layer:
            self.pooler = Pooler(cfg)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False) -> EncoderOutput:
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        b, l = input_ids.shape
        if l > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {l} exceeds max_position_embeddings={cfg.max_position_embeddings} "
                             "(the learned position table); use a longer preset such as m2-bert-80m-32k or override "
                             "max_position_embeddings")
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, l), jnp.int32)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        if self.embedding_extensions:  # soft prompts: may lengthen x and the mask
            if attention_mask is None:
                attention_mask = jnp.ones((b, l), jnp.int32)
            x, attention_mask = extensions.apply_embeddings(self.embedding_extensions, x, attention_mask, deterministic)
        mask = None if attention_mask is None else attention_mask.astype(bool)
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask, deterministic)
            if output_hidden_states:
                states.append(_masked(x, mask))
        x = _masked(x, mask)
        pooled = self.pooler(x) if cfg.add_pooling_layer else None
        return EncoderOutput(last_hidden_state=x, pooler_output=pooled,
                             hidden_states=tuple(states) if output_hidden_states else None)

    def word_embedding_table(self) -> jax.Array:
        """The ``[vocab, embed]`` input embedding matrix (for the tied MLM decoder); call after ``__call__``."""
        return meta.unbox(self.embeddings.variables["params"]["word_embeddings"]["embedding"])


def non_embedding_param_count(params: Any) -> int:
    """Parameters under ``layer_*`` (the encoder body without embeddings, pooler or heads) of a param tree."""
    import math

    from jaxbert.models.params import flat_paths, split_path
    flat = flat_paths(meta.unbox(params))
    return int(sum(math.prod(v.shape) for p, v in flat.items() if any(k.startswith("layer_") for k in split_path(p))))


def config_from_dict(d: dict[str, Any]) -> M2Config:
    """An :class:`M2Config` from :meth:`M2Config.to_dict` output (e.g. an MLM export's ``jaxbert_config``)."""
    d = dict(d)
    if d.pop("extensions", None):
        raise ValueError("cannot rebuild extensions from a config dict; add them to the config afterwards")
    if d.get("model_type", "m2_bert") != "m2_bert":
        raise ValueError(f"config has model_type={d.get('model_type')!r}, not 'm2_bert'")
    names = {f.name for f in dataclasses.fields(M2Config)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown M2Config field(s) {unknown}")
    return M2Config(**d)


def load_exported(path: Any) -> tuple[M2Config, dict]:
    """``(config, params)`` of an M2 MLM export: ``{"encoder": ..., "mlm_head": ...}`` params.

    Reads the safetensors export (``model.safetensors`` + ``config.json``, reference key names,
    through :func:`jaxbert.convert.hf.load_pretrained`) or the older ``params.msgpack`` +
    ``config.json`` form. ``params["encoder"]`` is what :class:`M2Model` takes.
    """
    import json
    from pathlib import Path

    from flax import serialization

    path = Path(path)
    if (path / "model.safetensors").is_file():
        from jaxbert.convert.hf import load_pretrained
        pre = load_pretrained(path, task="mlm", add_pooling_layer=False)  # MLM never uses the pooler
        return pre.config, pre.params
    for name in ("config.json", "params.msgpack"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found (expected an M2 export: model.safetensors or "
                                    "params.msgpack, + config.json)")
    raw = json.loads((path / "config.json").read_text())
    if "jaxbert_config" not in raw:
        raise ValueError(f"{path / 'config.json'} has no 'jaxbert_config' section (keys: {sorted(raw)})")
    cfg = config_from_dict(raw["jaxbert_config"])
    params = serialization.msgpack_restore((path / "params.msgpack").read_bytes())
    return cfg, params


# ----------------------------------------------------------------------------- reference checkpoints


def params_from_reference(state_dict: dict[str, Any], cfg: M2Config, prefix: str = "bert.") -> tuple[dict, dict]:
    """Backbone params of :class:`M2Model` from a HazyResearch/m2 ``BertModel`` state dict (numpy arrays).

    ``state_dict`` maps the reference's names (``{prefix}embeddings.word_embeddings.weight``,
    ``{prefix}encoder.layer.{i}.attention.in_linear.weight``, ...; ``prefix="bert."`` for
    ``BertForMaskedLM`` / ``BertForSequenceClassification`` checkpoints, ``""`` for a bare
    ``BertModel``) to arrays. Returns ``(params, report)``; ``report["positional_features_max_abs_diff"]``
    is the largest difference between the checkpoint's trained filter features ``pos_emb.z`` and
    the computed ones that jaxbert uses (see :mod:`jaxbert.models.layers.hyena`), and
    ``report["unused"]`` lists the keys that were not read (heads, buffers). A missing key is a
    ``KeyError`` naming it. Only ``mlp_linear="blockdiag"`` / ``"dense"`` layouts are mapped.
    """
    import numpy as np

    from jaxbert.models.layers.hyena import positional_features

    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        key = prefix + name
        if key not in sd:
            close = difflib.get_close_matches(key, sd, n=3)
            raise KeyError(f"reference state dict has no {key!r}" + (f"; close: {close}" if close else ""))
        used.add(key)
        return sd[key]

    d = cfg.hidden_size
    ln = lambda name: {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}
    emb = {"word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
           "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
           "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
           "norm": ln("embeddings.LayerNorm")}
    params: dict[str, Any] = {"embeddings": emb}
    z_diff = 0.0
    n_inner = cfg.hyena_num_inner_mlps

    def filter_params(base: str) -> dict:
        nonlocal z_diff
        out: dict[str, Any] = {"bias": get(f"{base}.bias"), "act": {"freq": get(f"{base}.implicit_filter.1.freq").reshape(-1)}}
        for mlp in ("implicit_filter",) + (("implicit_filter_rev",) if cfg.bidirectional else ()):
            linear = lambda j: get(f"{base}.{mlp}.{2 * j}.weight").T
            node = {"in_proj": {"kernel": linear(0), "bias": get(f"{base}.{mlp}.0.bias")}}
            for i in range(n_inner):
                node[f"inner_{i}"] = {"kernel": linear(i + 1), "bias": get(f"{base}.{mlp}.{2 * (i + 1)}.bias")}
            node["out_proj"] = {"kernel": linear(n_inner + 1)}
            out[mlp] = node
        for key in (f"{base}.pos_emb.z", f"{base}.pos_emb.t", f"{base}.modulation.deltas"):
            if prefix + key in sd:
                used.add(prefix + key)
        if prefix + f"{base}.pos_emb.z" in sd:
            z = sd[prefix + f"{base}.pos_emb.z"][0]
            ours, _ = positional_features(z.shape[0], cfg.filter_l_max, cfg.hyena_emb_dim)
            z_diff = max(z_diff, float(np.abs(np.asarray(ours) - z).max()))
        for key in list(sd):  # the shared Sin module appears under every index it is used at
            if key.startswith(prefix + f"{base}.implicit_filter") and key.endswith(".freq"):
                used.add(key)
        return out

    for i in range(cfg.num_hidden_layers):
        a = f"encoder.layer.{i}.attention"
        w_in = get(f"{a}.in_linear.weight")  # [3d, d]
        mixer: dict[str, Any] = {
            "in_linear": {"kernel": w_in.T.reshape(d, 3, d), "bias": get(f"{a}.in_linear.bias").reshape(3, d)},
            "short_conv": {"kernel": get(f"{a}.short_filter.weight")[:, 0, :].T.reshape(-1, 3, d),
                           "bias": get(f"{a}.short_filter.bias").reshape(3, d)},
            "filter_fn": filter_params(f"{a}.filter_fn"),
            "out_linear": {"kernel": get(f"{a}.out_linear.weight").T, "bias": get(f"{a}.out_linear.bias")},
        }
        if cfg.residual_long_conv:
            mixer["filter_fn2"] = filter_params(f"{a}.filter_fn2")
        if cfg.hyena_training_additions:
            mixer["norm"] = ln(f"{a}.layernorm")
        m = f"encoder.layer.{i}.mlp"
        if cfg.mlp_linear == "blockdiag":
            mlp = {"gated_layers": {"kernel": get(f"{m}.gated_layers.weight").transpose(0, 2, 1)},
                   "wo": {"kernel": get(f"{m}.wo.weight").transpose(0, 2, 1), "bias": get(f"{m}.wo.bias")}}
        elif cfg.mlp_linear == "dense":
            mlp = {"gated_layers": {"kernel": get(f"{m}.gated_layers.weight").T},
                   "wo": {"kernel": get(f"{m}.wo.weight").T, "bias": get(f"{m}.wo.bias")}}
        else:
            raise ValueError("params_from_reference maps mlp_linear='blockdiag' or 'dense' checkpoints")
        params[f"layer_{i}"] = {"mixer": mixer, "mlp": mlp, "mlp_norm": ln(f"{m}.layernorm")}
    if cfg.add_pooling_layer:
        params["pooler"] = {"dense": {"kernel": get("pooler.dense.weight").T, "bias": get("pooler.dense.bias")}}
    report = {"positional_features_max_abs_diff": z_diff, "unused": sorted(set(sd) - used)}
    return params, report
