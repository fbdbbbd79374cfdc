"""M2-BERT (Monarch Mixer) parameters <-> the reference's PyTorch state dict, through a regex key table.

The key names are those of HazyResearch/m2 ``bert/src/bert_layers.py`` (``BertModel``,
``BertForMaskedLM``, ``BertForSequenceClassification``) and ``bert/src/mm/`` (the sequence mixer
``MonarchMixerSequenceMixing`` sits where attention was, at ``encoder.layer.{i}.attention``)::

    reference key (under "bert." in task models)            jaxbert path                       transform
    embeddings.{word,position,token_type}_embeddings.weight  embeddings/*/embedding             -
    embeddings.LayerNorm.{weight,bias}                       embeddings/norm/{scale,bias}       -
    encoder.layer.{i}.attention.in_linear.weight [3d, d]     layer_{i}/mixer/in_linear/kernel   [d, 3, d]
    encoder.layer.{i}.attention.in_linear.bias [3d]          .../in_linear/bias                 [3, d]
    encoder.layer.{i}.attention.short_filter.weight [3d,1,K] .../short_conv/kernel              [K, 3, d]
    encoder.layer.{i}.attention.short_filter.bias [3d]       .../short_conv/bias                [3, d]
    encoder.layer.{i}.attention.{F}.bias [d]                 .../{F}/bias  (the D skip term)    -
    encoder.layer.{i}.attention.{F}.{M}.0.{weight,bias}      .../{F}/{M}/in_proj/{kernel,bias}  Linear
    encoder.layer.{i}.attention.{F}.{M}.2 / .4               .../{F}/{M}/inner_0 / inner_1      Linear
    encoder.layer.{i}.attention.{F}.{M}.6.weight             .../{F}/{M}/out_proj/kernel        Linear
    encoder.layer.{i}.attention.{F}.implicit_filter.1.freq   .../{F}/act/freq                   [1, o] -> [o]
    encoder.layer.{i}.attention.out_linear.{weight,bias}     .../mixer/out_linear               Linear
    encoder.layer.{i}.attention.layernorm.{weight,bias}      .../mixer/norm  (training additions)
    encoder.layer.{i}.mlp.gated_layers.weight [k, 2m/k, d/k] layer_{i}/mlp/gated_layers/kernel  [k, d/k, 2m/k]
    encoder.layer.{i}.mlp.wo.{weight [k, d/k, m/k], bias}    layer_{i}/mlp/wo                   [k, m/k, d/k]
    encoder.layer.{i}.mlp.layernorm.{weight,bias}            layer_{i}/mlp_norm                 -
    pooler.dense.{weight,bias}                               pooler/dense                       Linear
    cls.predictions.transform.dense / .LayerNorm             mlm_head/transform / transform_norm
    cls.predictions.decoder.bias                             mlm_head/bias   (decoder.weight: tied)
    classifier.{weight,bias}                                 classifier/out                     Linear

with ``F`` in ``filter_fn`` / ``filter_fn2`` (the residual long convolution) and ``M`` in
``implicit_filter`` / ``implicit_filter_rev``. ``mlp_linear="dense"`` checkpoints (the reference's
``use_monarch_mlp=False``) store plain ``nn.Linear`` weights under the same MLP names.

**Tensors that are not jaxbert parameters.** The reference keeps one ``Sin`` module per filter,
shared by every activation of both MLPs, so its ``freq`` appears under six keys
(``{M}.{1,3,5}.freq``); the filters' positional features ``pos_emb.z`` (a parameter trained at
learning rate 1e-5) and ``pos_emb.t`` / ``modulation.deltas`` (buffers); the buffer
``embeddings.position_ids``; the tied ``cls.predictions.decoder.weight``. jaxbert computes the
features and decay (that is what makes its filters length-agnostic; see
:mod:`jaxbert.models.layers.hyena`). Export writes all of them (:func:`export_extras`, the
computed values), so the reference's ``load_state_dict`` finds every key it has (an MLM export
also carries a pooler, which ``BertForMaskedLM`` lacks: load it with ``strict=False``, as the
reference's ``from_composer`` does). Import checks them (:func:`prepare_state`, notes in
``LoadReport.adapted``): the six ``freq`` copies must agree, and the largest difference between
a checkpoint's ``pos_emb.z`` and the computed features is reported (a reference-trained
checkpoint differs slightly). A reference ``config.json`` (``model_type="bert"`` with
``monarch_mixer_sequence_mixing: true``) is recognised as ``m2_bert``.

**Longer inputs than the checkpoint's position table.** When the config asks for more positions
than the checkpoint has (``max_position_embeddings`` overridden at load time, e.g. the 8k
retrieval model started from a 512-position pretraining), the position rule tiles the learned
rows (row ``p`` takes row ``p mod n``, the Longformer "copy" initialisation), logs a warning and
notes it in the load report.
The filters keep the checkpoint's ``long_conv_l_max`` (written as a number in every export), so
their taps are unchanged. A table longer than the config asks for is a shape mismatch (an error).

Use it through :mod:`jaxbert.convert.hf` like any architecture (``model_type="m2_bert"``, registered
by :mod:`jaxbert.models.m2.spec`)::

    save_pretrained("out", params, m2_config, task="mlm", tokenizer=tok)  # + config.json, one atomic swap
    pre = load_pretrained("out", task="base")                              # or model.init_from="out"
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from jaxbert.convert.report import CheckpointMismatchError
from jaxbert.convert.rules import LINEAR, KeyTable, Rule, Transform, linear_rules, norm_rules

log = logging.getLogger(__name__)

FILTERS = ("filter_fn", "filter_fn2")
FILTER_MLPS = ("implicit_filter", "implicit_filter_rev")
REFERENCE_INNER_MLPS = 2  # MonarchMixerSequenceMixing never passes num_inner_mlps: always HyenaFilter's default
SIN_INDICES = (1, 3, 5)  # positions of the shared Sin module inside each implicit-filter nn.Sequential


def _d(cfg: Any) -> int:
    return cfg.hidden_size


# in_linear: torch [3d, d] <-> [d, 3, d]; bias [3d] <-> [3, d]
IN_KERNEL = Transform(lambda a, c: a.T.reshape(a.shape[1], 3, -1), lambda a, c: a.reshape(a.shape[0], -1).T)
IN_BIAS = Transform(lambda a, c: a.reshape(3, -1), lambda a, c: a.reshape(-1))
# short_filter: depthwise Conv1d weight [3d, 1, K] <-> [K, 3, d]; bias [3d] <-> [3, d]
SHORT_KERNEL = Transform(lambda a, c: a[:, 0, :].T.reshape(a.shape[2], 3, -1),
                         lambda a, c: a.reshape(a.shape[0], -1).T[:, None, :])
# BlockdiagLinear weight [k, out/k, in/k] <-> kernel [k, in/k, out/k]; dense MLP: a Linear
BLOCKDIAG = Transform(lambda a, c: a.transpose(0, 2, 1) if a.ndim == 3 else a.T,
                      lambda a, c: a.transpose(0, 2, 1) if a.ndim == 3 else a.T)
# Sin.freq [1, order] <-> [order]
FREQ = Transform(lambda a, c: a.reshape(-1), lambda a, c: a.reshape(1, -1))


def tile_positions(table: np.ndarray, cfg: Any) -> np.ndarray:
    """``[n, d]`` learned position table -> ``[cfg.max_position_embeddings, d]`` (row p = row p mod n) when
    the config asks for more rows; otherwise unchanged (a longer table then fails the shape check)."""
    n, want = table.shape[0], int(cfg.max_position_embeddings)
    if n >= want:
        return table
    log.warning("M2 position embeddings: the checkpoint has %d positions, the config %d; rows %d..%d are copies "
                "of rows 0..%d (row p = row p mod %d)", n, want, n, want - 1, n - 1, n)
    return np.resize(table, (want, table.shape[1])).astype(table.dtype)


POSITIONS = Transform(tile_positions, lambda a, c: a)


def _filter_rules(f: str) -> list[Rule]:
    a, j = f"encoder.layer.{{layer}}.attention.{f}", f"layer_{{layer}}/mixer/{f}"
    rules = [Rule(f"{a}.bias", f"{j}/bias"), Rule(f"{a}.implicit_filter.1.freq", f"{j}/act/freq", FREQ)]
    for mlp in FILTER_MLPS:
        rules += linear_rules(f"{a}.{mlp}.0", f"{j}/{mlp}/in_proj")
        for i in range(REFERENCE_INNER_MLPS):
            rules += linear_rules(f"{a}.{mlp}.{2 * (i + 1)}", f"{j}/{mlp}/inner_{i}")
        rules.append(Rule(f"{a}.{mlp}.{2 * (REFERENCE_INNER_MLPS + 1)}.weight", f"{j}/{mlp}/out_proj/kernel", LINEAR))
    return rules


M2_BACKBONE_RULES: list[Rule] = [
    Rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding", POSITIONS),
    Rule("embeddings.token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding"),
    *norm_rules("embeddings.LayerNorm", "embeddings/norm"),
    Rule("encoder.layer.{layer}.attention.in_linear.weight", "layer_{layer}/mixer/in_linear/kernel", IN_KERNEL),
    Rule("encoder.layer.{layer}.attention.in_linear.bias", "layer_{layer}/mixer/in_linear/bias", IN_BIAS),
    Rule("encoder.layer.{layer}.attention.short_filter.weight", "layer_{layer}/mixer/short_conv/kernel", SHORT_KERNEL),
    Rule("encoder.layer.{layer}.attention.short_filter.bias", "layer_{layer}/mixer/short_conv/bias", IN_BIAS),
    *_filter_rules("filter_fn"),
    *_filter_rules("filter_fn2"),
    *linear_rules("encoder.layer.{layer}.attention.out_linear", "layer_{layer}/mixer/out_linear"),
    *norm_rules("encoder.layer.{layer}.attention.layernorm", "layer_{layer}/mixer/norm"),
    Rule("encoder.layer.{layer}.mlp.gated_layers.weight", "layer_{layer}/mlp/gated_layers/kernel", BLOCKDIAG),
    Rule("encoder.layer.{layer}.mlp.wo.weight", "layer_{layer}/mlp/wo/kernel", BLOCKDIAG),
    Rule("encoder.layer.{layer}.mlp.wo.bias", "layer_{layer}/mlp/wo/bias"),
    *norm_rules("encoder.layer.{layer}.mlp.layernorm", "layer_{layer}/mlp_norm"),
    *linear_rules("pooler.dense", "pooler/dense"),
]

M2_HEAD_RULES: dict[str, list[Rule]] = {
    "base": [],
    "mlm": [*linear_rules("cls.predictions.transform.dense", "mlm_head/transform"),
            *norm_rules("cls.predictions.transform.LayerNorm", "mlm_head/transform_norm"),
            Rule("cls.predictions.decoder.bias", "mlm_head/bias")],
    "sequence_classification": linear_rules("classifier", "classifier/out"),
}
M2_HF_ARCHITECTURES = {"base": "BertModel", "mlm": "BertForMaskedLM",
                       "sequence_classification": "BertForSequenceClassification"}

# Reference tensors that are not jaxbert parameters (checked by prepare_state, written by export_extras).
M2_BENIGN_KEYS = [r"embeddings\.position_ids", r"embeddings\.token_type_ids",
                  # copies of the shared Sin.freq (not the canonical implicit_filter.1.freq: a rule reads that)
                  r"encoder\.layer\.\d+\.attention\.filter_fn2?\.(implicit_filter_rev\.\d+|implicit_filter\.[02-9]\d*)\.freq",
                  r"encoder\.layer\.\d+\.attention\.filter_fn2?\.pos_emb\.[zt]",
                  r"encoder\.layer\.\d+\.attention\.filter_fn2?\.modulation\.deltas",
                  r"cls\.predictions\.decoder\.weight"]
M2_OTHER_HEAD_KEYS = [r"cls\..*", r"classifier\..*"]

KEYS = KeyTable(backbone=M2_BACKBONE_RULES, hf_prefix="bert.", heads=M2_HEAD_RULES, benign=M2_BENIGN_KEYS,
                other_heads=M2_OTHER_HEAD_KEYS, optional=[r"pooler/.*"])  # MLM models have no pooler


def is_reference_config(hf_config: dict) -> bool:
    """A HazyResearch/m2 ``config.json``: ``model_type="bert"`` with ``monarch_mixer_sequence_mixing: true``."""
    return hf_config.get("model_type") == "bert" and bool(hf_config.get("monarch_mixer_sequence_mixing"))


def _check_exportable(cfg: Any) -> None:
    if cfg.hyena_num_inner_mlps != REFERENCE_INNER_MLPS:
        raise ValueError(f"hyena_num_inner_mlps={cfg.hyena_num_inner_mlps}: the reference's filters always have "
                         f"{REFERENCE_INNER_MLPS} inner layers, so there are no reference key names for this config")
    if cfg.mlp_linear == "monarch":
        raise ValueError("mlp_linear='monarch' (the full B P B P product) has no reference layout; the reference "
                         "uses block-diagonal ('blockdiag') or dense MLPs")


def _prefix_of(state: dict, suffix: str) -> str | None:
    for key in state:
        if key.endswith(suffix):
            return key[: len(key) - len(suffix)]
    return None


def prepare_state(state: dict[str, np.ndarray], cfg: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """Check the reference-only tensors of a state dict against ``cfg`` (``load_pretrained`` calls this
    before the key table runs).

    Returns ``(state, notes)``: the state dict (position table tiled as the key table would) and
    human-readable notes (the ``pos_emb.z`` difference, the tiling). Raises
    :class:`~jaxbert.convert.report.CheckpointMismatchError` naming the keys when the six copies of a
    filter's shared ``freq`` disagree or ``pos_emb.z`` has the wrong width.
    """
    from jaxbert.models.layers.hyena import positional_features

    _check_exportable(cfg)
    state = dict(state)
    notes: list[str] = []
    # shared Sin.freq: every copy must equal the one the key table reads
    bad = []
    for key in state:
        m = re.fullmatch(r"(.*\.filter_fn2?)\.(implicit_filter(?:_rev)?)\.(\d+)\.freq", key)
        if m:
            canonical = f"{m.group(1)}.implicit_filter.1.freq"
            if canonical not in state:
                bad.append(f"{key} (no {canonical})")
            elif not np.array_equal(np.asarray(state[key]), np.asarray(state[canonical])):
                bad.append(key)
    if bad:
        raise CheckpointMismatchError("filter activation frequencies that should be one shared Sin module differ "
                                      f"from '<filter>.implicit_filter.1.freq': {bad[:10]}")
    # trained positional features vs the computed ones
    z_diff = 0.0
    zs = [k for k in state if k.endswith(".pos_emb.z")]
    for key in zs:
        z = np.asarray(state[key])
        z = z[0] if z.ndim == 3 else z
        ours, _ = positional_features(z.shape[0], cfg.filter_l_max, cfg.hyena_emb_dim)
        if z.shape[-1] != cfg.hyena_emb_dim:
            raise CheckpointMismatchError(f"{key} has {z.shape[-1]} features per position, config hyena_emb_dim="
                                          f"{cfg.hyena_emb_dim}")
        z_diff = max(z_diff, float(np.abs(np.asarray(ours) - z).max()))
    if zs:
        notes.append(f"filter positional features: computed, max |checkpoint pos_emb.z - computed| = {z_diff:.2e}")
        if z_diff > 1e-3:
            log.warning("M2 checkpoint's trained filter positional features differ from the computed ones by up to "
                        "%.3g; jaxbert uses the computed features", z_diff)
    # position table shorter than the config asks for: tile the learned rows
    suffix = "embeddings.position_embeddings.weight"
    prefix = _prefix_of(state, suffix)
    if prefix is not None:
        table = np.asarray(state[prefix + suffix])
        n, want = table.shape[0], int(cfg.max_position_embeddings)
        if n < want:
            state[prefix + suffix] = tile_positions(table, cfg)
            notes.append(f"{prefix}{suffix}: the checkpoint has {n} positions, the config {want}; rows "
                         f"{n}..{want - 1} are copies of rows 0..{n - 1} (row p = row p mod {n})")
    return state, notes


def export_extras(state: dict[str, np.ndarray], cfg: Any) -> dict[str, np.ndarray]:
    """The reference-only tensors for an exported state dict (module docstring), keyed like ``state``.

    ``state`` is the output of the key table (``bert.``-prefixed for task models); the returned
    dict holds the shared ``freq`` copies, ``pos_emb.z`` ``[1, l_max, emb_dim]``, ``pos_emb.t``
    ``[1, l_max, 1]``, ``modulation.deltas`` ``[1, 1, d]``, ``embeddings.position_ids``
    ``[1, max_positions]`` and, for MLM models, the tied ``cls.predictions.decoder.weight``.
    """
    from jaxbert.models.layers.hyena import decay_rates, positional_features

    _check_exportable(cfg)
    out: dict[str, np.ndarray] = {}
    z, _ = positional_features(cfg.filter_l_max, cfg.filter_l_max, cfg.hyena_emb_dim)
    t = np.linspace(0.0, 1.0, cfg.filter_l_max, dtype=np.float32)[None, :, None]  # the reference's linspace
    deltas = np.linspace(np.log(1e-2) / 1.5, np.log(1e-2) / 0.3, cfg.hidden_size, dtype=np.float32)[None, None]
    assert np.allclose(np.abs(deltas[0, 0]), np.asarray(decay_rates(cfg.hidden_size)), atol=1e-6)
    for key in list(state):
        m = re.fullmatch(r"(.*\.filter_fn2?)\.implicit_filter\.1\.freq", key)
        if not m:
            continue
        base = m.group(1)
        for mlp in FILTER_MLPS if cfg.bidirectional else FILTER_MLPS[:1]:
            for i in SIN_INDICES:
                if f"{base}.{mlp}.{i}.freq" != key:
                    out[f"{base}.{mlp}.{i}.freq"] = state[key]
        out[f"{base}.pos_emb.z"] = np.asarray(z, np.float32)[None]
        out[f"{base}.pos_emb.t"] = t
        out[f"{base}.modulation.deltas"] = deltas
    prefix = _prefix_of(state, "embeddings.position_embeddings.weight")
    if prefix is not None:
        out[prefix + "embeddings.position_ids"] = np.arange(cfg.max_position_embeddings, dtype=np.int64)[None]
        word = state.get(prefix + "embeddings.word_embeddings.weight")
        if word is not None and "cls.predictions.decoder.bias" in state:
            out["cls.predictions.decoder.weight"] = np.array(word, copy=True)
    return out
