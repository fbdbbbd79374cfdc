"""Llama / Qwen2 checkpoints (transformers safetensors directories and GGUF files) <-> jaxbert LLM params.

One regex key table (:data:`LLM_BACKBONE_RULES`, the :mod:`jaxbert.convert.hf` machinery) maps
transformers' ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` keys to :class:`jaxbert.models.llm.LlmModel`
paths in both directions; GGUF files (:mod:`jaxbert.models.llm.gguf`) are first turned into the same
transformers-named state dict, so both formats go through one table and one strictness check.

::

    pre = load_llm("/path/to/hf_dir")                       # or a .gguf file
    out = pre.model.apply({"params": pre.params}, ids, mask, attention_mode="bidirectional")
    tok = load_llm_tokenizer("/path/to/hf_dir", pre.config)  # vocab-size checked
    save_llm_pretrained("/out", pre.params, pre.config)     # transformers loads it (LlamaForCausalLM)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxbert.convert.atomic_dir import write_weights_dir
from jaxbert.convert.hf import (LINEAR, Architecture, CheckpointMismatchError, Pretrained, Rule,
                                Transform, hf_to_params, init_params, params_to_hf, read_hf_config,
                                read_safetensors)
from jaxbert.models.llm.model import LLM_MODEL_TYPES, LlmConfig, LlmModel

# q: [H*D, E] -> [E, H, D]; k/v: [K*D, E] -> [E, K, D]; o: [E, H*D] -> [H, D, E]
Q_KERNEL = Transform(lambda a, c: a.T.reshape(a.shape[1], c.num_attention_heads, c.head_dim),
                     lambda a, c: a.reshape(a.shape[0], -1).T)
KV_KERNEL = Transform(lambda a, c: a.T.reshape(a.shape[1], c.kv_heads, c.head_dim),
                      lambda a, c: a.reshape(a.shape[0], -1).T)
Q_BIAS = Transform(lambda a, c: a.reshape(c.num_attention_heads, c.head_dim), lambda a, c: a.reshape(-1))
KV_BIAS = Transform(lambda a, c: a.reshape(c.kv_heads, c.head_dim), lambda a, c: a.reshape(-1))
O_KERNEL = Transform(lambda a, c: a.T.reshape(c.num_attention_heads, c.head_dim, a.shape[0]),
                     lambda a, c: a.reshape(-1, a.shape[-1]).T)

_L = "layers.{layer}"
LLM_BACKBONE_RULES: list[Rule] = [
    Rule("embed_tokens.weight", "embeddings/word_embeddings/embedding"),
    Rule(f"{_L}.input_layernorm.weight", "layer_{layer}/attention_norm/scale"),
    Rule(f"{_L}.post_attention_layernorm.weight", "layer_{layer}/mlp_norm/scale"),
    Rule(f"{_L}.self_attn.q_proj.weight", "layer_{layer}/attention/query/kernel", Q_KERNEL),
    Rule(f"{_L}.self_attn.k_proj.weight", "layer_{layer}/attention/key/kernel", KV_KERNEL),
    Rule(f"{_L}.self_attn.v_proj.weight", "layer_{layer}/attention/value/kernel", KV_KERNEL),
    Rule(f"{_L}.self_attn.q_proj.bias", "layer_{layer}/attention/query/bias", Q_BIAS),
    Rule(f"{_L}.self_attn.k_proj.bias", "layer_{layer}/attention/key/bias", KV_BIAS),
    Rule(f"{_L}.self_attn.v_proj.bias", "layer_{layer}/attention/value/bias", KV_BIAS),
    Rule(f"{_L}.self_attn.o_proj.weight", "layer_{layer}/attention/out/kernel", O_KERNEL),
    Rule(f"{_L}.self_attn.o_proj.bias", "layer_{layer}/attention/out/bias"),
    Rule(f"{_L}.mlp.gate_proj.weight", "layer_{layer}/mlp/gate/kernel", LINEAR),
    Rule(f"{_L}.mlp.up_proj.weight", "layer_{layer}/mlp/up/kernel", LINEAR),
    Rule(f"{_L}.mlp.down_proj.weight", "layer_{layer}/mlp/down/kernel", LINEAR),
    Rule(f"{_L}.mlp.gate_proj.bias", "layer_{layer}/mlp/gate/bias"),
    Rule(f"{_L}.mlp.up_proj.bias", "layer_{layer}/mlp/up/bias"),
    Rule(f"{_L}.mlp.down_proj.bias", "layer_{layer}/mlp/down/bias"),
    Rule("norm.weight", "final_norm/scale"),
    # Untied LM head: outside "model." in LlmForCausalLM files (read through LLM_HEAD_RULES there).
    Rule("lm_head.weight", "lm_head/kernel", LINEAR),
]
LLM_HEAD_RULES: dict[str, list[Rule]] = {"base": [Rule("lm_head.weight", "lm_head/kernel", LINEAR)]}


def llm_architecture(model_type: str) -> Architecture:
    """The converter :class:`~jaxbert.convert.hf.Architecture` of ``llama`` / ``qwen2`` (keys under ``model.``)."""
    if model_type not in LLM_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not a supported LLM; supported: {LLM_MODEL_TYPES}")
    names = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    # rotary inv_freq buffers (old checkpoints) are recomputed; a tied lm_head copy is redundant.
    return Architecture(LlmConfig, LlmModel, LLM_BACKBONE_RULES, "model.", head_rules=LLM_HEAD_RULES,
                        benign_keys=[r".*rotary_emb\.inv_freq"], other_head_keys=[r"score\..*"],
                        hf_architectures={"base": names[model_type]})


def llm_params_from_state(state: dict[str, np.ndarray], config: LlmConfig, strict: bool = True,
                          source: Any = "") -> tuple[dict, Any]:
    """A transformers-named state dict -> ``(params, LoadReport)`` for :class:`LlmModel` of ``config``.

    A tied config ignores an ``lm_head.weight`` that only repeats the embedding; an untied config
    whose checkpoint lacks ``lm_head.weight`` is an error (strict).
    """
    model = LlmModel(config)
    template = jax.eval_shape(lambda r: init_params(model, r), jax.random.key(0))
    state = dict(state)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    try:
        params, report = hf_to_params(state, config, template, "base", strict=strict,
                                      arch=llm_architecture(config.model_type))
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{source}: {e}") from None
    params = jax.tree.map(lambda v: np.asarray(v) if not isinstance(v, jax.ShapeDtypeStruct) else
                          np.zeros(v.shape, v.dtype), params)
    return params, report


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def load_llm(path: str | os.PathLike, strict: bool = True, **config_overrides: Any) -> Pretrained:
    """Load a Llama / Qwen2 model: an HF directory (config.json + safetensors) or a ``.gguf`` file.

    ``config_overrides`` replace :class:`LlmConfig` fields (``attention_mode="bidirectional"``,
    ``dtype="bfloat16"``, ...). Returns :class:`~jaxbert.convert.hf.Pretrained` with
    ``task="causal_lm"``; ``hf_config`` is the transformers config dict (read or derived).
    """
    path = Path(path).expanduser()
    if path.suffix == ".gguf" or (path.is_file() and _magic(path) == b"GGUF"):
        from jaxbert.models.llm.gguf import read_gguf

        ckpt = read_gguf(path)
        hf_config, state = ckpt.hf_config, ckpt.state_dict
    else:
        hf_config = read_hf_config(path)
        if hf_config.get("model_type") not in LLM_MODEL_TYPES:
            raise ValueError(f"{path}/config.json has model_type={hf_config.get('model_type')!r}; "
                             f"load_llm reads {LLM_MODEL_TYPES} (BERT-family models: jaxbert.convert.hf.load_pretrained)")
        state = read_safetensors(path)
    config = LlmConfig.from_hf_dict(hf_config, **config_overrides)
    params, report = llm_params_from_state(state, config, strict=strict, source=path)
    if config.storage_dtype != np.float32:
        params = jax.tree.map(lambda v: np.asarray(v).astype(config.storage_dtype), params)
    return Pretrained(config=config, model=LlmModel(config), params=params, report=report, task="causal_lm",
                      hf_config=hf_config)


def load_llm_tokenizer(path: str | os.PathLike, config: LlmConfig | None = None, tokenizer: Any = None):
    """The tokenizer of an LLM checkpoint, checked against ``config.vocab_size``.

    ``tokenizer``: a tokenizer object or a directory to load one from (``AutoTokenizer``). Else, for
    a ``.gguf`` file the tokenizer is rebuilt from the GGUF metadata (transformers' GGUF support),
    and for an HF directory it is loaded from the directory. A tokenizer with more tokens than the
    model's vocabulary raises ValueError. A missing pad token is set to the EOS token (LLM2Vec does
    the same).
    """
    from transformers import AutoTokenizer

    path = Path(path).expanduser()
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        src = path if tokenizer is None else Path(tokenizer).expanduser()
        try:
            if src.suffix == ".gguf":
                tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            else:
                tok = AutoTokenizer.from_pretrained(str(src))
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise ValueError(f"could not load a tokenizer from {src}: {e}") from e
    else:
        tok = tokenizer
    if config is not None and len(tok) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the model's vocab_size is {config.vocab_size}; "
                         f"tokenizer and weights ({path}) do not match")
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def save_llm_pretrained(path: str | os.PathLike, params: dict, config: LlmConfig,
                        extra_config: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' ``Llama/Qwen2ForCausalLM`` loads.

    Atomic like :func:`jaxbert.convert.hf.save_pretrained` (temporary sibling, then rename).
    """

    path = Path(path)
    arch = llm_architecture(config.model_type)
    flat_state = params_to_hf(params, config, "base", arch)
    state = {("" if k == "lm_head.weight" else "model.") + k: v for k, v in flat_state.items()}
    hf = config.to_hf_dict()
    hf.update(extra_config or {})
    return write_weights_dir(path, state, hf)
