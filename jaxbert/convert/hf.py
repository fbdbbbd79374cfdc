"""Hugging Face checkpoints <-> jaxbert params, through regex key tables (no torch needed).

A key table is a list of :class:`Rule` s. Each rule pairs a HF key template with a jaxbert
path template; ``{name}`` placeholders become named regex groups (``{layer}`` matches digits,
``{qkv}`` one of query/key/value), so one table serves both directions. A rule's
:class:`Transform` converts the array (transpose a Linear weight, split heads, ...).

Reading::

    pre = load_pretrained("/path/to/hf_dir", task="sequence_classification", num_labels=2)
    pre.model.apply({"params": pre.params}, input_ids, attention_mask)

Writing::

    save_pretrained("/out/dir", pre.params, pre.config, task="sequence_classification")
    transformers.BertForSequenceClassification.from_pretrained("/out/dir")  # same outputs

Loading is strict by default: backbone weights missing from the checkpoint, checkpoint keys
that no rule knows, and shape mismatches raise :class:`CheckpointMismatchError` listing all of
them. Head weights absent from the checkpoint (a fresh classifier on a pretrained encoder) are
initialised and reported, as transformers does. ``strict=False`` loads whatever matches and
returns the lists in :class:`LoadReport`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import flax.linen as nn
from flax import traverse_util

from jaxbert.convert.atomic_dir import write_weights_dir
from jaxbert.models.bert.model import BertConfig, BertModel
from jaxbert.models.transformer.model import Encoder, EncoderConfig
from jaxbert.models.task_models import TASKS, build_task_model

# ----------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class Transform:
    """Array conversion between the HF layout and the jaxbert layout; ``cfg`` gives head counts."""

    to_jax: Callable[[np.ndarray, Any], np.ndarray]
    to_hf: Callable[[np.ndarray, Any], np.ndarray]


IDENTITY = Transform(lambda a, c: a, lambda a, c: a)
# torch Linear weight [out, in] <-> flax kernel [in, out]
LINEAR = Transform(lambda a, c: a.T, lambda a, c: a.T)
# q/k/v: [H*D, E] -> [E, H, D]
QKV_KERNEL = Transform(
    lambda a, c: a.T.reshape(a.shape[1], c.num_attention_heads, c.head_dim),
    lambda a, c: a.reshape(a.shape[0], -1).T)
QKV_BIAS = Transform(lambda a, c: a.reshape(c.num_attention_heads, c.head_dim), lambda a, c: a.reshape(-1))
# attention output: [E, H*D] -> [H, D, E]
OUT_KERNEL = Transform(
    lambda a, c: a.T.reshape(c.num_attention_heads, c.head_dim, a.shape[0]),
    lambda a, c: a.reshape(-1, a.shape[-1]).T)

# ModernBERT fused projections: Wqkv [3*H*D, E] -> qkv [E, 3, H, D]; GLU Wi [2*I, E] -> wi [E, 2, I].
FUSED_QKV_KERNEL = Transform(
    lambda a, c: a.T.reshape(a.shape[1], 3, c.num_attention_heads, c.head_dim),
    lambda a, c: a.reshape(a.shape[0], -1).T)
FUSED_QKV_BIAS = Transform(lambda a, c: a.reshape(3, c.num_attention_heads, c.head_dim), lambda a, c: a.reshape(-1))
GLU_KERNEL = Transform(lambda a, c: a.T.reshape(a.shape[1], 2, -1), lambda a, c: a.reshape(a.shape[0], -1).T)
GLU_BIAS = Transform(lambda a, c: a.reshape(2, -1), lambda a, c: a.reshape(-1))

_PLACEHOLDERS = {"layer": r"\d+", "qkv": r"query|key|value", "wb": r"weight|bias"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One key mapping: ``hf`` and ``jax`` templates with shared ``{placeholders}``."""

    hf: str
    jax: str
    transform: Transform = IDENTITY

    def match_hf(self, key: str) -> str | None:
        m = _template_regex(self.hf).match(key)
        return self.jax.format(**m.groupdict()) if m else None

    def match_jax(self, path: str) -> str | None:
        m = _template_regex(self.jax).match(path)
        return self.hf.format(**m.groupdict()) if m else None


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    """``"encoder.layer.{layer}.x"`` -> ``encoder\\.layer\\.(?P<layer>\\d+)\\.x\\Z``."""
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos:m.start()])
        out += f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + r"\Z")


def _norm_rules(hf_prefix: str, jax_prefix: str) -> list[Rule]:
    # Old TF-converted checkpoints call LayerNorm parameters gamma/beta; we write weight/bias.
    return [Rule(f"{hf_prefix}.weight", f"{jax_prefix}/scale"), Rule(f"{hf_prefix}.bias", f"{jax_prefix}/bias"),
            Rule(f"{hf_prefix}.gamma", f"{jax_prefix}/scale"), Rule(f"{hf_prefix}.beta", f"{jax_prefix}/bias")]


def _linear_rules(hf_prefix: str, jax_prefix: str) -> list[Rule]:
    return [Rule(f"{hf_prefix}.weight", f"{jax_prefix}/kernel", LINEAR), Rule(f"{hf_prefix}.bias", f"{jax_prefix}/bias")]


BERT_BACKBONE_RULES: list[Rule] = [
    Rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding"),
    *_norm_rules("embeddings.LayerNorm", "embeddings/norm"),
    Rule("encoder.layer.{layer}.attention.self.{qkv}.weight", "layer_{layer}/attention/{qkv}/kernel", QKV_KERNEL),
    Rule("encoder.layer.{layer}.attention.self.{qkv}.bias", "layer_{layer}/attention/{qkv}/bias", QKV_BIAS),
    Rule("encoder.layer.{layer}.attention.output.dense.weight", "layer_{layer}/attention/out/kernel", OUT_KERNEL),
    Rule("encoder.layer.{layer}.attention.output.dense.bias", "layer_{layer}/attention/out/bias"),
    *_norm_rules("encoder.layer.{layer}.attention.output.LayerNorm", "layer_{layer}/attention_norm"),
    *_linear_rules("encoder.layer.{layer}.intermediate.dense", "layer_{layer}/mlp/wi"),
    *_linear_rules("encoder.layer.{layer}.output.dense", "layer_{layer}/mlp/wo"),
    *_norm_rules("encoder.layer.{layer}.output.LayerNorm", "layer_{layer}/mlp_norm"),
    *_linear_rules("pooler.dense", "pooler/dense"),
]

# Head rules per task: HF keys (no backbone prefix) -> jaxbert paths at the task-model root.
HEAD_RULES: dict[str, list[Rule]] = {
    "base": [],
    "mlm": [*_linear_rules("cls.predictions.transform.dense", "mlm_head/transform"),
            *_norm_rules("cls.predictions.transform.LayerNorm", "mlm_head/transform_norm"),
            Rule("cls.predictions.bias", "mlm_head/bias")],
    "sequence_classification": _linear_rules("classifier", "classifier/out"),
    "token_classification": _linear_rules("classifier", "classifier/out"),
    "question_answering": _linear_rules("qa_outputs", "qa_head/out"),
}

# Checkpoint keys that never map to a parameter: buffers and weights tied to others.
BENIGN_KEYS = [r"embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)"]
# Keys of heads other than the one being loaded (e.g. NSP, or an MLM head loaded for classification).
OTHER_HEAD_KEYS = [r"cls\..*", r"classifier\..*", r"qa_outputs\..*"]

HF_ARCHITECTURES = {
    "base": "BertModel", "mlm": "BertForMaskedLM", "sequence_classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification", "question_answering": "BertForQuestionAnswering",
}


# transformers' ModernBertModel / ModernBertForMaskedLM (backbone under "model." in task models).
MODERNBERT_BACKBONE_RULES: list[Rule] = [
    Rule("embeddings.tok_embeddings.weight", "embeddings/word_embeddings/embedding"),
    *_norm_rules("embeddings.norm", "embeddings/norm"),
    *_norm_rules("layers.{layer}.attn_norm", "layer_{layer}/attention_norm"),
    Rule("layers.{layer}.attn.Wqkv.weight", "layer_{layer}/attention/qkv/kernel", FUSED_QKV_KERNEL),
    Rule("layers.{layer}.attn.Wqkv.bias", "layer_{layer}/attention/qkv/bias", FUSED_QKV_BIAS),
    Rule("layers.{layer}.attn.Wo.weight", "layer_{layer}/attention/out/kernel", OUT_KERNEL),
    Rule("layers.{layer}.attn.Wo.bias", "layer_{layer}/attention/out/bias"),
    *_norm_rules("layers.{layer}.mlp_norm", "layer_{layer}/mlp_norm"),
    Rule("layers.{layer}.mlp.Wi.weight", "layer_{layer}/mlp/wi/kernel", GLU_KERNEL),
    Rule("layers.{layer}.mlp.Wi.bias", "layer_{layer}/mlp/wi/bias", GLU_BIAS),
    *_linear_rules("layers.{layer}.mlp.Wo", "layer_{layer}/mlp/wo"),
    *_norm_rules("final_norm", "final_norm"),
]
MODERNBERT_HEAD_RULES: dict[str, list[Rule]] = {
    "base": [],
    "mlm": [*_linear_rules("head.dense", "mlm_head/transform"),
            *_norm_rules("head.norm", "mlm_head/transform_norm"),
            Rule("decoder.bias", "mlm_head/bias")],
    # Fine-tuning a ModernBERT backbone (e.g. a from-scratch MLM export): the backbone loads, the
    # classifier starts fresh. jaxbert's classifier reads the [CLS] state directly; transformers'
    # ModernBertForSequenceClassification puts a dense + norm head (and mean or CLS pooling) in
    # front of it, so its trained head.* / classifier.* tensors are reported as ignored, never mapped.
    "sequence_classification": [],
    "token_classification": [],
}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Everything the converter needs to know about one ``model_type``.

    ``head_rules`` / ``benign_keys`` / ``other_head_keys`` / ``hf_architectures`` default to
    BERT's (``HEAD_RULES``, ``BENIGN_KEYS``, ``OTHER_HEAD_KEYS``, ``HF_ARCHITECTURES``).
    ``prepare_state(state, config) -> (state, notes)`` checks / adapts a checkpoint's tensors before
    the key table runs (notes go to ``LoadReport.adapted``); ``export_extras(state, config) -> dict``
    adds tensors that are not parameters (buffers, tied copies) to an exported state dict.
    """

    config_cls: type
    backbone: type
    backbone_rules: list[Rule]
    hf_prefix: str  # prefix of backbone keys inside HF task models ("bert.")
    head_rules: dict[str, list[Rule]] | None = None
    benign_keys: list[str] | None = None
    other_head_keys: list[str] | None = None
    hf_architectures: dict[str, str] | None = None
    prepare_state: Callable[[dict, Any], tuple[dict, list[str]]] | None = None
    export_extras: Callable[[dict, Any], dict] | None = None

    def rules_for(self, task: str) -> list[Rule]:
        rules = HEAD_RULES if self.head_rules is None else self.head_rules
        if task not in rules:
            raise ValueError(f"converting task {task!r} is not supported for this architecture "
                             f"(supported: {sorted(rules)})")
        return rules[task]

    def ignorable(self) -> list[str]:
        return ((BENIGN_KEYS if self.benign_keys is None else self.benign_keys)
                + (OTHER_HEAD_KEYS if self.other_head_keys is None else self.other_head_keys))

    def hf_architecture(self, task: str) -> str:
        names = HF_ARCHITECTURES if self.hf_architectures is None else self.hf_architectures
        if task not in names:
            raise ValueError(f"exporting task {task!r} is not supported for this architecture "
                             f"(supported: {sorted(names)})")
        return names[task]


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(BertConfig, BertModel, BERT_BACKBONE_RULES, "bert."),
    "modernbert": Architecture(
        EncoderConfig, Encoder, MODERNBERT_BACKBONE_RULES, "model.", head_rules=MODERNBERT_HEAD_RULES,
        benign_keys=[r"decoder\.weight"], other_head_keys=[r"head\..*", r"decoder\..*", r"classifier\..*"],
        hf_architectures={"base": "ModernBertModel", "mlm": "ModernBertForMaskedLM"}),
}

# ----------------------------------------------------------------------------- errors / report


class CheckpointMismatchError(ValueError):
    """Raised when checkpoint keys/shapes do not match the model; the message lists every problem."""


@dataclasses.dataclass
class LoadReport:
    """What happened to each key while loading (all lists of key/path strings)."""

    missing: list[str] = dataclasses.field(default_factory=list)  # model params absent from the checkpoint
    unexpected: list[str] = dataclasses.field(default_factory=list)  # checkpoint keys no rule knows
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)  # (path, ckpt, model)
    initialized: list[str] = dataclasses.field(default_factory=list)  # head params freshly initialised
    ignored: list[str] = dataclasses.field(default_factory=list)  # benign or other-task keys
    adapted: list[str] = dataclasses.field(default_factory=list)  # notes from Architecture.prepare_state

    def problems(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"missing from checkpoint ({len(self.missing)}): {_preview(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in checkpoint ({len(self.unexpected)}): {_preview(self.unexpected)}")
        if self.mismatched:
            lines.append("shape mismatches: " + "; ".join(f"{p}: checkpoint {c} vs model {m}"
                                                          for p, c, m in self.mismatched[:20]))
        return "\n".join(lines)


def _preview(items: list[str], n: int = 20) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: config, the Linen module for the task, params (plain dict), report."""

    config: Any
    model: nn.Module
    params: dict
    report: LoadReport
    task: str
    hf_config: dict


# ----------------------------------------------------------------------------- reading files


def read_hf_config(path: str | os.PathLike) -> dict:
    """Read ``config.json`` from an HF model directory, with errors that name the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory (expected an HF model directory)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: {path} is not an HF model directory")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: ``model.safetensors`` or sharded files with an index."""
    from safetensors.numpy import load_file

    path = Path(path)
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return dict(load_file(str(single)))
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' object")
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path / shard
            if not shard_path.is_file():
                raise FileNotFoundError(f"shard {shard_path} listed in {index} does not exist")
            out.update(load_file(str(shard_path)))
        if missing := sorted(set(weight_map) - set(out)):
            raise CheckpointMismatchError(f"{index} lists tensors absent from its shards: {_preview(missing)}")
        return out
    if (path / "pytorch_model.bin").is_file():
        raise FileNotFoundError(f"{path} has only pytorch_model.bin; jaxbert reads safetensors "
                                "(convert with transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def architecture_for(hf_config: dict, path: Any = "") -> Architecture:
    model_type = hf_config.get("model_type")
    if model_type == "bert" and hf_config.get("monarch_mixer_sequence_mixing"):  # a HazyResearch/m2 config
        model_type = "m2_bert"
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{path}/config.json has model_type={model_type!r}; jaxbert converts "
                         f"{sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


# ----------------------------------------------------------------------------- conversion


def _backbone_prefix(keys: list[str], arch: Architecture) -> str:
    """HF task models store the backbone under ``bert.``; bare ``BertModel`` files have no prefix."""
    return arch.hf_prefix if any(k.startswith(arch.hf_prefix) for k in keys) else ""


def hf_to_params(hf_state: dict[str, np.ndarray], config: Any, template: dict, task: str = "base",
                 strict: bool = True, arch: Architecture | None = None) -> tuple[dict, LoadReport]:
    """Map an HF state dict onto the structure of ``template`` (initialised params of the task model).

    Returns ``(params, report)``: params has ``template``'s structure, filled from the checkpoint
    wherever a rule matched and shapes agree; other leaves keep the template's values.
    """
    arch = arch or ARCHITECTURES[config.model_type]
    report = LoadReport()
    prefix = _backbone_prefix(list(hf_state), arch)
    jax_root = "" if task == "base" else "encoder/"
    converted: dict[str, np.ndarray] = {}
    for key, value in hf_state.items():
        target = None
        if prefix and key.startswith(prefix):
            sub = key[len(prefix):]
            rules, root = arch.backbone_rules, jax_root
        elif not prefix and not any(re.fullmatch(p, key) for p in arch.ignorable()):
            sub, rules, root = key, arch.backbone_rules, jax_root
        else:
            sub, rules, root = key, arch.rules_for(task), ""
        for rule in rules:
            if (path := rule.match_hf(sub)) is not None:
                target = (root + path, rule)
                break
        if target is None:
            if any(re.fullmatch(p, sub) for p in arch.ignorable()):
                report.ignored.append(key)
            else:
                report.unexpected.append(key)
            continue
        path, rule = target
        value = np.asarray(value)
        try:
            arr = rule.transform.to_jax(value, config)
        except ValueError:  # a reshaping transform (q/k/v, attention out) cannot take this shape
            arr = None
        converted[path] = (key, arr, tuple(value.shape))

    flat_template = {"/".join(k): v for k, v in traverse_util.flatten_dict(template).items()}
    out = {}
    for path, tmpl in flat_template.items():
        if path in converted:
            key, arr, hf_shape = converted.pop(path)
            if arr is None or tuple(arr.shape) != tuple(tmpl.shape):
                report.mismatched.append((path, hf_shape if arr is None else tuple(arr.shape), tuple(tmpl.shape)))
                out[path] = tmpl
            else:
                out[path] = arr.astype(tmpl.dtype)
        elif path.startswith(jax_root) or task == "base":
            report.missing.append(path)
            out[path] = tmpl
        else:
            report.initialized.append(path)
            out[path] = tmpl
    # Converted keys with no place in this model (e.g. the pooler when loading an MLM model).
    report.ignored.extend(key for key, _, _ in converted.values())
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise CheckpointMismatchError("checkpoint does not match the model:\n" + report.problems())
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})
    return params, report


def params_to_hf(params: dict, config: Any, task: str = "base", arch: Architecture | None = None
                 ) -> dict[str, np.ndarray]:
    """Inverse of :func:`hf_to_params`: jaxbert params -> HF state dict (float32 numpy)."""
    arch = arch or ARCHITECTURES[config.model_type]
    flat = {"/".join(k): np.asarray(jax.device_get(v)) for k, v in traverse_util.flatten_dict(params).items()}
    out: dict[str, np.ndarray] = {}
    unknown = []
    for path, value in flat.items():
        if task != "base" and path.startswith("encoder/"):
            sub, rules, prefix = path[len("encoder/"):], arch.backbone_rules, arch.hf_prefix
        elif task == "base":
            sub, rules, prefix = path, arch.backbone_rules, ""
        else:
            sub, rules, prefix = path, arch.rules_for(task), ""
        for rule in rules:
            if (key := rule.match_jax(sub)) is not None and not key.endswith((".gamma", ".beta")):
                out[prefix + key] = np.ascontiguousarray(rule.transform.to_hf(value, config).astype(np.float32))
                break
        else:
            unknown.append(path)
    if unknown:
        raise CheckpointMismatchError(f"no HF key for parameters: {_preview(unknown)}")
    return out


# ----------------------------------------------------------------------------- public entry points


def load_pretrained(path: str | os.PathLike, task: str = "base", num_labels: int | None = None,
                    strict: bool = True, seed: int = 0, **config_overrides: Any) -> Pretrained:
    """Load an HF directory (config.json + safetensors) as a jaxbert model for ``task``.

    ``num_labels`` defaults to the checkpoint config's ``num_labels``/``id2label`` for
    classification tasks. ``config_overrides`` replace config fields (e.g. ``dtype="bfloat16"``,
    ``hidden_dropout_prob=0.0``). Head parameters absent from the checkpoint are initialised
    with ``seed``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")
    hf_config = read_hf_config(path)
    arch = architecture_for(hf_config, path)
    config = arch.config_cls.from_hf_dict(hf_config, **config_overrides)
    state = read_safetensors(path)
    if task in ("sequence_classification", "token_classification") and num_labels is None:
        num_labels = hf_config.get("num_labels") or len(hf_config.get("id2label") or {}) or None
        if num_labels is None and "classifier.weight" in state:  # transformers omits the default 2 labels
            num_labels = state["classifier.weight"].shape[0]
        if num_labels is None:
            raise ValueError(f"task {task!r} needs num_labels ({path}/config.json has none)")
    notes: list[str] = []
    if arch.prepare_state is not None:
        try:
            state, notes = arch.prepare_state(state, config)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"{path}: {e}") from None
    model = build_task_model(config, arch.backbone, task, num_labels)
    # Shapes only: a full checkpoint needs no random init (compile + a model-sized allocation).
    template = jax.eval_shape(functools.partial(init_params, model), jax.random.key(seed))
    try:
        params, report = hf_to_params(state, model.config, template, task, strict=strict, arch=arch)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{path}: {e}") from None
    report.adapted.extend(notes)
    flat = traverse_util.flatten_dict(params)
    if any(isinstance(v, jax.ShapeDtypeStruct) for v in flat.values()):  # heads (or non-strict gaps) to init
        fresh = traverse_util.flatten_dict(init_params(model, jax.random.key(seed)))
        params = traverse_util.unflatten_dict(
            {k: fresh[k] if isinstance(v, jax.ShapeDtypeStruct) else v for k, v in flat.items()})
    return Pretrained(config=model.config, model=model, params=params, report=report, task=task,
                      hf_config=hf_config)


def init_params(model: nn.Module, rng: jax.Array, seq_len: int = 8) -> dict:
    """Initialise ``model`` on a dummy batch and return plain (unboxed) params.

    The jitted init is cached per (hashable, equal) module: compiling the random initialisers
    costs seconds on CPU, and loading several checkpoints of one shape should pay it once.
    """
    try:
        hash(model)
    except TypeError:  # unhashable module fields: compile afresh
        ids = np.zeros((1, seq_len), np.int32)
        return nn.unbox(jax.jit(lambda r: model.init(r, ids))(rng)["params"])
    return nn.unbox(_jit_init(model, rng, seq_len)["params"])


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_init(model: nn.Module, rng: jax.Array, seq_len: int) -> dict:
    return model.init(rng, np.zeros((1, seq_len), np.int32))


def save_pretrained(path: str | os.PathLike, params: dict, config: Any, task: str = "base",
                    id2label: dict[int, str] | None = None, extra_config: dict | None = None,
                    tokenizer: Any = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers loads for ``task``.

    The directory is written to a temporary sibling and renamed into place, so an interrupted
    export never leaves a half-written model where a good one was; ``tokenizer`` (anything with
    ``save_pretrained(dir)``) is written inside the same swap.
    """

    path = Path(path)
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"config.model_type={config.model_type!r} has no Hugging Face format in jaxbert; "
                         f"convertible: {sorted(ARCHITECTURES)}")
    arch = ARCHITECTURES[config.model_type]
    state = params_to_hf(params, config, task, arch)
    if arch.export_extras is not None:
        state.update(arch.export_extras(state, config))
    hf = config.to_hf_dict()
    hf["architectures"] = [arch.hf_architecture(task)]
    if task in ("sequence_classification", "token_classification"):
        n = state["classifier.weight"].shape[0]
        labels = id2label or {i: f"LABEL_{i}" for i in range(n)}
        hf["id2label"] = {str(i): str(v) for i, v in labels.items()}
        hf["label2id"] = {str(v): int(i) for i, v in labels.items()}
        hf["num_labels"] = n
    hf.update(extra_config or {})
    extra = None if tokenizer is None else (lambda tmp: tokenizer.save_pretrained(str(tmp)))
    return write_weights_dir(path, state, hf, extra_files=extra)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy tokenizer files (tokenizer.json, vocab.txt, tokenizer_config.json, ...) between model dirs."""
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                 "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model"):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
