"""Llama / Qwen2 checkpoints (transformers safetensors directories and GGUF files) <-> jaxbert LLM params.

One regex key table (:data:`KEYS`, the :mod:`jaxbert.convert.rules` machinery) maps transformers'
``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` keys to :class:`jaxbert.models.llm.LlmModel` paths in
both directions; GGUF files (:mod:`jaxbert.models.llm.gguf`) are first turned into the same
transformers-named state dict (:func:`read_gguf_file`, the spec's ``read_file`` hook), so both
formats go through one table, one strictness check and the one entry point,
:func:`jaxbert.convert.hf.load_pretrained` (registered by :mod:`jaxbert.models.llm.spec`)::

    pre = load_pretrained("/path/to/hf_dir")                 # or a .gguf file; load_llm(...) is the same
    out = pre.model.apply({"params": pre.params}, ids, mask, attention_mode="bidirectional")
    tok = load_llm_tokenizer("/path/to/hf_dir", pre.config)  # vocab-size checked
    save_pretrained("/out", pre.params, pre.config)          # transformers loads it (LlamaForCausalLM)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxbert.convert.rules import LINEAR, KeyTable, Rule, Transform
from jaxbert.models.llm.model import LlmConfig

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
]
# The untied LM head sits outside "model." in *ForCausalLM files; LlmModel holds it (task "base").
LLM_HEAD_RULES: dict[str, list[Rule]] = {"base": [Rule("lm_head.weight", "lm_head/kernel", LINEAR)]}

# rotary inv_freq buffers (old checkpoints) are recomputed; "score.*" is a sequence-classification head.
KEYS = KeyTable(backbone=LLM_BACKBONE_RULES, hf_prefix="model.", heads=LLM_HEAD_RULES,
                benign=[r".*rotary_emb\.inv_freq"], other_heads=[r"score\..*"], base_prefix="model.")


def prepare_state(state: dict[str, np.ndarray], config: LlmConfig) -> tuple[dict[str, np.ndarray], list[str]]:
    """A tied config ignores an ``lm_head.weight`` that only repeats the embedding (the spec's
    ``prepare_state`` hook); an untied config whose checkpoint lacks it is a strict-load error."""
    if config.tie_word_embeddings and "lm_head.weight" in state:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        return state, ["lm_head.weight: tied to the input embeddings, not loaded"]
    return state, []


def is_gguf_file(path: Path) -> bool:
    """A ``.gguf`` file, or a file starting with the GGUF magic bytes."""
    if path.suffix == ".gguf":
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def read_gguf_file(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(hf_config, transformers-named state dict)`` of a GGUF file (the spec's ``read_file`` hook)."""
    from jaxbert.models.llm.gguf import read_gguf

    ckpt = read_gguf(path)
    return ckpt.hf_config, ckpt.state_dict


def load_llm(path: str | os.PathLike, strict: bool = True, **config_overrides: Any):
    """Load a Llama / Qwen2 model (HF directory or ``.gguf`` file): :func:`jaxbert.convert.hf.load_pretrained`
    with ``task="base"`` (the :class:`LlmModel`, LM head included), refusing encoder checkpoints.

    ``config_overrides`` replace :class:`LlmConfig` fields (``attention_mode="bidirectional"``,
    ``dtype="bfloat16"``, ...).
    """
    from jaxbert.convert.hf import load_pretrained
    from jaxbert.models import registry

    pre = load_pretrained(path, task="base", strict=strict, **config_overrides)
    if registry.spec_of(pre.config).kind != "decoder":
        raise ValueError(f"{path} holds a {pre.config.model_type!r} model, not a decoder LLM; load it with "
                         "jaxbert.convert.hf.load_pretrained")
    return pre


def load_llm_tokenizer(path: str | os.PathLike, config: LlmConfig | None = None, tokenizer: Any = None):
    """The tokenizer of an LLM checkpoint, checked against ``config.vocab_size``.

    ``tokenizer``: a tokenizer object or a directory to load one from (``AutoTokenizer``). Else, for
    a ``.gguf`` file the tokenizer is rebuilt from the GGUF metadata (transformers' GGUF support),
    and for an HF directory it is loaded from the directory (one without tokenizer files is a
    FileNotFoundError naming the files expected). A tokenizer with more ids than the model's
    vocabulary, or much smaller than it (:func:`jaxbert.data.tokenization.check_vocab`), raises
    ValueError. A missing pad token is set to the EOS token (LLM2Vec does
    the same).
    """
    from transformers import AutoTokenizer

    from jaxbert.data.tokenization import check_vocab, require_tokenizer_files

    path = Path(path).expanduser()
    src = path
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        src = path if tokenizer is None else Path(tokenizer).expanduser()
        if src.suffix != ".gguf":
            require_tokenizer_files(src)  # else transformers builds a few-token tokenizer from config.json
        try:
            if src.suffix == ".gguf":
                tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            else:
                tok = AutoTokenizer.from_pretrained(str(src))
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise ValueError(f"could not load a tokenizer from {src}: {e}") from e
    else:
        tok = tokenizer
    if config is not None:  # the check the encoders and tasks use: no id past the table, none much smaller
        check_vocab(tok, config.vocab_size, pretrained=True, source=f"{src}, weights {path}")
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
