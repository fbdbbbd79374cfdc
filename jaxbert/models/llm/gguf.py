"""GGUF (llama.cpp) checkpoints -> transformers-named float32 state dicts for jaxbert's LLMs.

:func:`read_gguf` reads a ``.gguf`` file with the ``gguf`` package, dequantizes every tensor to
float32 (``gguf.quants.dequantize``), undoes llama.cpp's Q/K row permutation (Llama only) and
renames tensors to transformers' ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` keys; the config
comes from the GGUF metadata. :func:`jaxbert.models.llm.hf.load_llm` then maps that state dict
to :class:`~jaxbert.models.llm.LlmModel` params through the same key table as safetensors files,
so::

    pre = load_llm("SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = load_llm_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf", pre.config)  # from the GGUF metadata

The Q/K permutation: llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) reorders the
rows of ``q_proj`` / ``k_proj`` (and their biases) per head from the rotate-half layout to the
interleaved-pairs layout its RoPE kernel uses: ``w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2)``.
:func:`unpermute_qk` is its inverse (``reshape(n_head, d/2, 2, ...).swapaxes(1, 2)``), with
``n_head`` the k/v head count for ``k_proj``. Qwen2 files are not permuted.

Supported: architectures ``llama`` (incl. Mistral-shaped files) and ``qwen2``; tensor types F32,
F16, and every type the installed ``gguf`` package can dequantize (BF16, Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, the K-quants, ...). Anything else raises :class:`GGUFError` naming the file and tensor.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")


class GGUFError(ValueError):
    """A GGUF file jaxbert cannot read: unsupported architecture, tensor type or layout."""


def supported_tensor_types() -> tuple[str, ...]:
    """Names of the GGML tensor types this installation can dequantize."""
    from gguf import quants

    return ("F32", "F16") + tuple(t.name for t in quants._type_traits)


@dataclasses.dataclass
class GGUFCheckpoint:
    """A read GGUF file: ``architecture``, transformers-style ``hf_config``, float32 ``state_dict``
    (transformers key names), the original ``tensor_types`` (name -> GGML type) and raw ``metadata``."""

    path: Path
    architecture: str
    hf_config: dict[str, Any]
    state_dict: dict[str, np.ndarray]
    tensor_types: dict[str, str]
    metadata: dict[str, Any]


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of a Q or K weight ``[n_head * d, in]`` (or bias ``[n_head * d]``)."""
    if w.shape[0] % (2 * n_head):
        raise GGUFError(f"cannot un-permute a tensor with {w.shape[0]} rows into {n_head} heads of even size")
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (``convert_hf_to_gguf.py`` ``LlamaModel.permute``); inverse of :func:`unpermute_qk`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# GGUF tensor name -> transformers key ({n} = layer index)
_NAME_MAP: list[tuple[str, str]] = [
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{n}.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{n}.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q\.(weight|bias)", "model.layers.{n}.self_attn.q_proj.{wb}"),
    (r"blk\.(\d+)\.attn_k\.(weight|bias)", "model.layers.{n}.self_attn.k_proj.{wb}"),
    (r"blk\.(\d+)\.attn_v\.(weight|bias)", "model.layers.{n}.self_attn.v_proj.{wb}"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", "model.layers.{n}.self_attn.o_proj.{wb}"),
    (r"blk\.(\d+)\.ffn_gate\.weight", "model.layers.{n}.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", "model.layers.{n}.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", "model.layers.{n}.mlp.down_proj.weight"),
]


def gguf_to_hf_name(name: str) -> str | None:
    """The transformers key of GGUF tensor ``name`` (None when there is none)."""
    for rx, template in _NAME_MAP:
        m = re.fullmatch(rx, name)
        if m:
            groups = m.groups()
            return template.format(n=groups[0] if groups else "", wb=groups[1] if len(groups) > 1 else "")
    return None


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All scalar metadata of a GGUF file (arrays such as the token list are left out)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and len(field.data) > 1:
            continue
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - exotic field types: skip
            continue
    return out


def _hf_config(reader, arch: str, tensor_names: set[str]) -> dict[str, Any]:
    get = lambda key, default=None: _field(reader, f"{arch}.{key}", default)
    heads = get("attention.head_count")
    hidden = get("embedding_length")
    if heads is None or hidden is None:
        raise GGUFError(f"GGUF metadata lacks {arch}.attention.head_count / {arch}.embedding_length")
    vocab = get("vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    if vocab is None:
        raise GGUFError(f"GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    head_dim = get("attention.key_length") or get("rope.dimension_count") or hidden // heads
    cfg: dict[str, Any] = {
        "model_type": arch,
        "vocab_size": int(vocab), "hidden_size": int(hidden),
        "num_hidden_layers": int(get("block_count")), "num_attention_heads": int(heads),
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(head_dim),
        "intermediate_size": int(get("feed_forward_length")),
        "max_position_embeddings": int(get("context_length", 2048)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": any(n.endswith("attn_q.bias") for n in tensor_names),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    scaling_type = get("rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise GGUFError(f"GGUF rope scaling type {scaling_type!r} is not supported (supported: linear)")
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    if arch == "qwen2":
        cfg["use_sliding_window"] = False
    if arch == "llama" and cfg["attention_bias"] != any(n.endswith("attn_output.bias") for n in tensor_names):
        raise GGUFError("Llama GGUF with q/k/v biases but no output bias (or the reverse) is not supported")
    return cfg


def read_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Read, dequantize and rename a GGUF checkpoint (see the module docstring).

    Raises FileNotFoundError for a missing file, :class:`GGUFError` for an architecture other than
    ``llama`` / ``qwen2``, a tensor type that cannot be dequantized, a tensor with no transformers
    name (e.g. ``rope_freqs`` of Llama-3.1 files) or a tensor whose shape does not match the metadata.
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - not a GGUF file / corrupt
        raise GGUFError(f"{path} is not a readable GGUF file: {e}") from e
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: GGUF architecture {arch!r} is not supported; jaxbert reads {SUPPORTED_ARCHITECTURES}")
    names = {t.name for t in reader.tensors}
    cfg = _hf_config(reader, arch, names)
    supported = supported_tensor_types()
    bad = sorted({f"{t.name} ({t.tensor_type.name})" for t in reader.tensors if t.tensor_type.name not in supported})
    if bad:
        raise GGUFError(f"{path}: tensor type(s) that jaxbert cannot dequantize: {', '.join(bad[:10])}"
                        + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else "")
                        + f"; supported types: {', '.join(supported)}")
    unknown = sorted(n for n in names if gguf_to_hf_name(n) is None)
    if unknown:
        hint = " (rope_freqs: Llama-3.1-style RoPE frequency factors are not supported yet)" \
            if "rope_freqs.weight" in unknown else ""
        raise GGUFError(f"{path}: tensors with no transformers name: {unknown[:10]}{hint}")
    state: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for t in reader.tensors:
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        except NotImplementedError as e:
            raise GGUFError(f"{path}: cannot dequantize {t.name} of type {t.tensor_type.name}: {e}") from None
        expected = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
        if w.size != int(np.prod(expected)):
            raise GGUFError(f"{path}: tensor {t.name} has {w.size} values for shape {expected}")
        w = w.reshape(expected)
        if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
            w = unpermute_qk(w, heads if ".attn_q." in t.name else kv_heads)
        key = gguf_to_hf_name(t.name)
        state[key] = w
        types[key] = t.tensor_type.name
    return GGUFCheckpoint(path=path, architecture=arch, hf_config=cfg, state_dict=state, tensor_types=types,
                          metadata=read_metadata(path))


def write_gguf(path: str | os.PathLike, state: dict[str, np.ndarray], hf_config: dict[str, Any],
               tensor_type: str = "F32", tokens: list[str] | None = None) -> Path:
    """Write a transformers-named Llama/Qwen2 state dict as a GGUF file (tests, small exports).

    Applies llama.cpp's Q/K permutation for ``llama``; ``tensor_type`` is ``F32``, ``F16`` or a
    quantization type the ``gguf`` package can quantize (``Q8_0``, ...) for 2-D weights (norms stay F32).
    Tokenizer metadata is written only when ``tokens`` are given (a minimal ``gpt2``-model vocabulary).
    """
    import gguf
    from gguf import GGMLQuantizationType as Q

    arch = hf_config["model_type"]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"write_gguf supports {SUPPORTED_ARCHITECTURES}, got {arch!r}")
    writer = gguf.GGUFWriter(str(path), arch)
    heads = hf_config["num_attention_heads"]
    kv = hf_config.get("num_key_value_heads") or heads
    writer.add_block_count(hf_config["num_hidden_layers"])
    writer.add_context_length(hf_config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hf_config["hidden_size"])
    writer.add_feed_forward_length(hf_config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(float(hf_config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(hf_config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(hf_config["vocab_size"])
    for key, fn in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                    ("pad_token_id", writer.add_pad_token_id)):
        if hf_config.get(key) is not None:
            fn(int(hf_config[key]))
    if tokens is not None:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
    qtype = Q[tensor_type]
    for key, w in state.items():
        gname = _hf_to_gguf_name(key)
        w = np.asarray(w, np.float32)
        if arch == "llama" and (".q_proj." in key or ".k_proj." in key):
            w = permute_qk(w, heads if ".q_proj." in key else kv)
        if w.ndim == 2 and qtype not in (Q.F32, Q.F16):
            writer.add_tensor(gname, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        elif w.ndim == 2 and qtype == Q.F16:
            writer.add_tensor(gname, w.astype(np.float16))
        else:
            writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _hf_to_gguf_name(key: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if not m:
        raise GGUFError(f"no GGUF name for {key}")
    n, rest = m.groups()
    table = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
             "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.bias": "attn_output.bias",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    if rest not in table:
        raise GGUFError(f"no GGUF name for {key}")
    return f"blk.{n}.{table[rest]}"
