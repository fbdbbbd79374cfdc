"""Hugging Face checkpoints <-> jaxbert params, through regex key tables (no torch needed).

Architecture-free: the checkpoint's ``config.json`` (or a single-file format such as GGUF) picks
an :class:`~jaxbert.models.architecture.ArchitectureSpec` from :mod:`jaxbert.models.registry`,
whose key table (:class:`~jaxbert.convert.rules.KeyTable`, in ``jaxbert/models/<family>/hf.py``)
maps every tensor; its hooks adapt the state on load and add non-parameter tensors on export.

Reading::

    pre = load_pretrained("/path/to/hf_dir", task="sequence_classification", num_labels=2)
    pre.model.apply({"params": pre.params}, input_ids, attention_mask)

Writing::

    save_pretrained("/out/dir", pre.params, pre.config, task="sequence_classification")
    transformers.BertForSequenceClassification.from_pretrained("/out/dir")  # same outputs

Loading is strict by default: backbone weights missing from the checkpoint, checkpoint keys
that no rule knows, keys a rule maps to a parameter the configured model does not have (a
``config.json`` saying 4 layers over 6-layer weights, a bias the config turns off) and shape
mismatches raise :class:`CheckpointMismatchError` listing all of them, with the likely cause. Head weights absent from the checkpoint (a fresh classifier on a pretrained encoder) are
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

from jaxbert.convert import atomic_dir
from jaxbert.convert.atomic_dir import write_weights_dir
from jaxbert.convert.report import CheckpointMismatchError, LoadReport, preview
from jaxbert.convert.rules import KeyTable
from jaxbert.models import registry
from jaxbert.models.architecture import ArchitectureSpec
from jaxbert.models.params import join_keys, split_path
from jaxbert.models.task_models import TASKS, build_task_model


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
    if not path.exists() and not atomic_dir.recover(path):  # an export interrupted mid-swap is put back
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
            raise CheckpointMismatchError(f"{index} lists tensors absent from its shards: {preview(missing)}")
        return out
    if (path / "pytorch_model.bin").is_file():
        raise FileNotFoundError(f"{path} has only pytorch_model.bin; jaxbert reads safetensors "
                                "(convert with transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def read_checkpoint(path: str | os.PathLike) -> tuple[ArchitectureSpec, dict, dict[str, np.ndarray]]:
    """``(spec, hf_config, state)`` of a checkpoint: an HF directory (config.json + safetensors) or a
    single file in a format some registered architecture reads (``ArchitectureSpec.read_file``, e.g. GGUF)."""
    path = Path(path).expanduser()
    if path.is_file() and (spec := registry.spec_for_file(path)) is not None:
        hf_config, state = spec.read_file(path)
        return registry.spec_for_hf_config(hf_config, path), hf_config, state
    hf_config = read_hf_config(path)
    spec = registry.spec_for_hf_config(hf_config, path)
    return spec, hf_config, read_safetensors(path)


# ----------------------------------------------------------------------------- conversion


def _backbone_prefix(keys: list[str], arch: KeyTable) -> str:
    """HF task models store the backbone under ``bert.``; bare ``BertModel`` files have no prefix."""
    return arch.hf_prefix if any(k.startswith(arch.hf_prefix) for k in keys) else ""


def hf_to_params(hf_state: dict[str, np.ndarray], config: Any, template: dict, task: str = "base",
                 strict: bool = True, arch: KeyTable | None = None) -> tuple[dict, LoadReport]:
    """Map an HF state dict onto the structure of ``template`` (initialised params of the task model).

    ``arch``: the key table (default: that of ``config.model_type``'s spec). Returns ``(params,
    report)``: params has ``template``'s structure, filled from the checkpoint wherever a rule
    matched and shapes agree; other leaves keep the template's values.
    """
    arch = arch or registry.spec_of(config).key_table()
    report = LoadReport()
    prefix = _backbone_prefix(list(hf_state), arch)
    jax_root = "" if task == "base" else "encoder/"
    converted: dict[str, tuple] = {}  # jaxbert path -> (HF key, array, HF shape, optional module)
    layers_seen: set[int] = set()
    for key, value in hf_state.items():
        target = None
        if prefix and key.startswith(prefix):
            sub = key[len(prefix):]
            rules, root = arch.backbone, jax_root
        elif not prefix and not any(re.fullmatch(p, key) for p in arch.ignorable()):
            sub, rules, root = key, arch.backbone, jax_root
        else:
            sub, rules, root = key, arch.rules_for(task), ""
        for rule in rules:
            if (hit := rule.parse_hf(sub)) is not None:
                target = (root + hit[0], rule)
                optional = any(re.fullmatch(p, hit[0]) for p in arch.optional)
                if "layer" in hit[1]:
                    layers_seen.add(int(hit[1]["layer"]))
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
        converted[path] = (key, arr, tuple(value.shape), optional)

    flat_template = {join_keys(k): v for k, v in traverse_util.flatten_dict(template).items()}
    out = {}
    for path, tmpl in flat_template.items():
        if path in converted:
            key, arr, hf_shape, _ = converted.pop(path)
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
    # Converted keys with no place in this model: ignored where the module is optional by
    # configuration (the pooler of an MLM model), else a mismatch between config.json and the weights.
    report.ignored.extend(key for key, _, _, optional in converted.values() if optional)
    report.unplaced.extend(key for key, _, _, optional in converted.values() if not optional)
    if report.unplaced:
        report.hints.extend(_unplaced_hints(converted, layers_seen, config))
    if strict and report.has_problems():
        raise CheckpointMismatchError("checkpoint does not match the model:\n" + report.problems())
    params = traverse_util.unflatten_dict({split_path(k): v for k, v in out.items()})
    return params, report


def _unplaced_hints(converted: dict[str, tuple], layers_seen: set[int], config: Any) -> list[str]:
    """Why mapped keys found no parameter: more layers in the weights than the config builds, or a
    config flag (a bias, a head part) that leaves out a parameter the checkpoint has."""
    n_model = getattr(config, "num_hidden_layers", None)
    extra = [path for path, (_, _, _, optional) in converted.items() if not optional]
    layer_paths = [p for p in extra if re.search(r"(^|/)layer_\d+/", p)]
    hints = []
    if layers_seen and n_model is not None and max(layers_seen) + 1 > n_model and layer_paths:
        hints.append(f"the config (config.json) has num_hidden_layers={n_model} but the weights have "
                     f"{max(layers_seen) + 1} layers")
    if len(layer_paths) < len(extra) or not hints:
        other = [p for p in extra if p not in layer_paths] or extra
        hints.append(f"the config leaves out parameters the weights have ({preview(other, 5)}): a config flag "
                     "(a bias, a head part) that does not match the checkpoint")
    return hints


def _hf_key(rule, path: str) -> str | None:
    """The HF key ``rule`` writes for ``path`` (export writes LayerNorm ``weight``/``bias``, never ``gamma``/``beta``)."""
    key = rule.match_jax(path)
    return None if key is None or key.endswith((".gamma", ".beta")) else key


def params_to_hf(params: dict, config: Any, task: str = "base", arch: KeyTable | None = None
                 ) -> dict[str, np.ndarray]:
    """Inverse of :func:`hf_to_params`: jaxbert params -> HF state dict (float32 numpy).

    In a ``"base"`` export backbone keys get the table's ``base_prefix``; paths no backbone rule
    knows are tried against the ``"base"`` head rules (e.g. an LLM's untied ``lm_head``).
    """
    arch = arch or registry.spec_of(config).key_table()
    flat = {join_keys(k): np.asarray(jax.device_get(v)) for k, v in traverse_util.flatten_dict(params).items()}
    out: dict[str, np.ndarray] = {}
    unknown = []
    for path, value in flat.items():
        if task != "base" and path.startswith("encoder/"):
            tries = [(path[len("encoder/"):], arch.backbone, arch.hf_prefix)]
        elif task == "base":
            tries = [(path, arch.backbone, arch.base_prefix), (path, arch.rules_for("base"), "")]
        else:
            tries = [(path, arch.rules_for(task), "")]
        hit = next(((prefix + k, rule) for sub, rules, prefix in tries for rule in rules
                    if (k := _hf_key(rule, sub)) is not None), None)
        if hit is None:
            unknown.append(path)
            continue
        key, rule = hit
        out[key] = np.ascontiguousarray(rule.transform.to_hf(value, config).astype(np.float32))
    if unknown:
        raise CheckpointMismatchError(f"no HF key for parameters: {preview(unknown)}")
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
    spec, hf_config, state = read_checkpoint(path)
    keys = spec.key_table()
    keys.rules_for(task)  # an unsupported task fails before any work
    config = spec.config_from_hf(hf_config, **config_overrides)
    if task in ("sequence_classification", "token_classification") and num_labels is None:
        num_labels = hf_config.get("num_labels") or len(hf_config.get("id2label") or {}) or None
        if num_labels is None and "classifier.weight" in state:  # transformers omits the default 2 labels
            num_labels = state["classifier.weight"].shape[0]
        if num_labels is None:
            raise ValueError(f"task {task!r} needs num_labels ({path}/config.json has none)")
    notes: list[str] = []
    if spec.prepare_state is not None:
        try:
            state, notes = spec.prepare_state(state, config)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"{path}: {e}") from None
    model = build_task_model(config, spec.backbone, task, num_labels)
    # Shapes only: a full checkpoint needs no random init (compile + a model-sized allocation).
    template = jax.eval_shape(functools.partial(init_params, model), jax.random.key(seed))
    try:
        params, report = hf_to_params(state, model.config, template, task, strict=strict, arch=keys)
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
                    tokenizer: Any = None, extra_files: Callable[[Path], Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers loads for ``task``.

    The directory is written to a temporary sibling and swapped into place in one step
    (:mod:`jaxbert.convert.atomic_dir`), so an interrupted export never leaves a half-written
    model where a good one was. ``tokenizer`` (anything with ``save_pretrained(dir)``) and
    ``extra_files(tmp_dir)`` (further files: a lexicon, sentence-transformers modules) are written
    inside the same swap: the directory appears complete or not at all.
    """

    path = Path(path)
    spec = registry.spec_of(config)
    state = params_to_hf(params, config, task, spec.key_table())
    if spec.export_extras is not None:
        state.update(spec.export_extras(state, config))
    hf = spec.config_to_hf(config)
    hf["architectures"] = [spec.hf_architecture(task)]
    if task in ("sequence_classification", "token_classification"):
        n = int(np.shape(params["classifier"]["out"]["kernel"])[-1])
        labels = id2label or {i: f"LABEL_{i}" for i in range(n)}
        hf["id2label"] = {str(i): str(v) for i, v in labels.items()}
        hf["label2id"] = {str(v): int(i) for i, v in labels.items()}
        hf["num_labels"] = n
    hf.update(extra_config or {})

    def extra(tmp: Path) -> None:
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if extra_files is not None:
            extra_files(tmp)

    return write_weights_dir(path, state, hf, extra_files=extra)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy tokenizer files (tokenizer.json, vocab.txt, tokenizer_config.json, ...) between model dirs."""
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                 "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model"):
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)  # new file: umask permissions, as transformers
