"""Export a jaxbert embedder as a sentence-transformers directory.

::

    save_sentence_transformer("out/", encoder_params, config, tokenizer, pooling="mean", normalize=True)
    SentenceTransformer("out/").encode(texts)        # same embeddings as jaxbert (tested)
    jaxbert.SentenceEncoder.from_pretrained("out/")  # and back

Layout written (the one sentence-transformers saves for a Transformer + Pooling [+ Normalize]
model)::

    config.json, model.safetensors          HF BertModel (jaxbert.convert.hf.save_pretrained, task "base")
    tokenizer files                         tokenizer.save_pretrained
    modules.json                            [Transformer "", Pooling "1_Pooling", Normalize "2_Normalize"]
    1_Pooling/config.json                   pooling flags (legacy ``pooling_mode_*`` keys, read by every version)
    2_Normalize/                            (empty; only with normalize=True)
    sentence_bert_config.json               max_seq_length, do_lower_case
    config_sentence_transformers.json       versions, similarity_fn_name "cosine"

Everything (weights, config, tokenizer, the module files) is written into one temporary sibling
and swapped into place in one step (:mod:`jaxbert.convert.atomic_dir`): an interrupted export
never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from jaxbert.convert import hf as hf_convert
from jaxbert.models.pooling import check_mode

# jaxbert mode -> sentence-transformers legacy flag, in sentence-transformers' concatenation order.
_LEGACY = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
           "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens", "weightedmean": "pooling_mode_weightedmean_tokens",
           "last": "pooling_mode_lasttoken"}
_ST_NAMES = {"cls": "cls", "max": "max", "mean": "mean", "mean_sqrt_len": "mean_sqrt_len_tokens",
             "weightedmean": "weightedmean", "last": "lasttoken"}


def pooling_config(modes: Sequence[str], dim: int) -> dict[str, Any]:
    """``1_Pooling/config.json`` for ``modes``: legacy flags when their fixed order matches, else
    the newer ``pooling_mode`` list (sentence-transformers >= 5)."""
    modes = check_mode(tuple(modes))
    legacy_order = [m for m in _LEGACY if m in modes]
    if list(modes) == legacy_order and len(set(modes)) == len(modes):
        out: dict[str, Any] = {"word_embedding_dimension": int(dim)}
        out.update({flag: m in modes for m, flag in _LEGACY.items()})
        out["include_prompt"] = True
        return out
    names = [_ST_NAMES[m] for m in modes]
    return {"embedding_dimension": int(dim), "pooling_mode": names[0] if len(names) == 1 else names,
            "include_prompt": True}


def save_sentence_transformer(path: str | os.PathLike, encoder_params: dict, config: Any, tokenizer: Any = None,
                              *, tokenizer_dir: str | os.PathLike | None = None,
                              pooling: str | Sequence[str] = "mean", normalize: bool = True,
                              max_seq_length: int = 256, do_lower_case: bool = False) -> Path:
    """Write a sentence-transformers directory for a BERT-family encoder.

    ``encoder_params``: the backbone's params (the ``encoder`` subtree of a task model).
    ``tokenizer`` (an HF tokenizer, saved with ``save_pretrained``) or ``tokenizer_dir`` (files
    copied) is required: a sentence-transformers model without its tokenizer cannot encode.
    """
    if tokenizer is None and tokenizer_dir is None:
        raise ValueError("save_sentence_transformer needs the tokenizer (tokenizer= or tokenizer_dir=)")
    modes = check_mode(pooling)
    if max_seq_length > getattr(config, "max_position_embeddings", max_seq_length):
        raise ValueError(f"max_seq_length={max_seq_length} exceeds the model's max_position_embeddings="
                         f"{config.max_position_embeddings}")

    def st_files(tmp: Path) -> None:
        if tokenizer is None:
            hf_convert.copy_tokenizer_files(tokenizer_dir, tmp)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (tmp / "2_Normalize").mkdir()
        (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
        (tmp / "1_Pooling").mkdir()
        (tmp / "1_Pooling" / "config.json").write_text(
            json.dumps(pooling_config(modes, config.hidden_size), indent=2))
        (tmp / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": int(max_seq_length), "do_lower_case": bool(do_lower_case)}, indent=2))
        (tmp / "config_sentence_transformers.json").write_text(json.dumps(
            {"model_type": "SentenceTransformer", "__version__": {"jaxbert": _version()}, "prompts": {},
             "default_prompt_name": None,
             "similarity_fn_name": "cosine"}, indent=2))

    # Weights, config, tokenizer and the sentence-transformers files: one directory, one swap.
    return hf_convert.save_pretrained(path, encoder_params, config, task="base", tokenizer=tokenizer,
                                      extra_files=st_files)


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("jaxbert")
    except Exception:  # not installed as a distribution
        return "dev"
