"""Sentence embeddings from a Llama / Qwen2 decoder: :class:`LlmSentenceEncoder`.

``jaxbert.SentenceEncoder.from_pretrained`` (dispatching on the architecture's ``kind``) returns one of these for
any checkpoint whose architecture is a decoder (a ``.gguf`` file, an HF ``llama`` / ``qwen2`` directory)::

    enc = jaxbert.SentenceEncoder.from_pretrained(fetch("smollm2"), pooling="mean", bidirectional=True)
    emb = enc.encode(["a domestic animal"], instruction="Retrieve the definition of the phrase: ")

Differences from the BERT-family encoder:

* ``bidirectional`` (default True) picks the attention mode: True = every token sees every
  non-pad token (LLM2Vec); False = the causal attention the model was trained with (pair it
  with ``pooling="last_token"``).
* A directory exported by the ``llm_embedding`` training task (:mod:`jaxbert.tasks.llm_embedding`)
  records its pooling, attention mode, EOS appending, max length and normalisation in
  ``config.json`` (``jaxbert_embedding``); :meth:`LlmSentenceEncoder.load` uses them for every
  argument left None.
* ``pooling``: one of :data:`jaxbert.models.llm.pooling.LLM_POOLINGS` (``mean``,
  ``weighted_mean``, ``last_token``/``eos``, ``first_token``); default ``mean``.
* ``add_eos`` (default: True for last-token pooling): append the EOS token to every text, so
  the last token is the same special token for all inputs (LLM2Vec's ``eos_token`` pooling).
* ``instruction``: a prefix fed to the model but left out of the pooled vector (embed mask).
  Tokens of the special prefix the tokenizer adds (BOS) are left out too, except for
  first-token pooling.
* Batching (length buckets, row buckets, asynchronous dispatch) is the base class's.
"""

from __future__ import annotations

import collections
import functools
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from jaxbert.compiler_options import compiler_options
from jaxbert.inference.sentence_encoder import SentenceEncoder, check_max_length, pick_max_length
from jaxbert.models.llm.pooling import canonical_pooling, llm_pool
from jaxbert.models.pooling import l2_normalize

_IN_FLIGHT = 8
_OWN_KEYWORDS = ("add_eos", "bidirectional", "normalize", "tokenizer")


def _llm_embed(params, input_ids, attention_mask, embed_mask, *, model, mode, normalize):
    out = model.apply({"params": params}, input_ids, attention_mask)
    x = llm_pool(out.last_hidden_state, attention_mask, mode, embed_mask)
    return l2_normalize(x) if normalize else x


@functools.lru_cache(maxsize=16)
def _jitted_llm_embed(model: Any, mode: str):
    return jax.jit(functools.partial(_llm_embed, model=model, mode=mode), static_argnames=("normalize",),
                   compiler_options=compiler_options())


def _saved_embedding_settings(path: Path) -> dict[str, Any]:
    """The ``jaxbert_embedding`` entry of an HF directory's ``config.json`` ({} if none)."""
    import json

    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return {}
    try:
        entry = json.loads(cfg.read_text()).get("jaxbert_embedding") or {}
    except (json.JSONDecodeError, OSError):
        return {}
    return dict(entry) if isinstance(entry, dict) else {}


class LlmSentenceEncoder(SentenceEncoder):
    """A decoder LLM (causal or bidirectional) + pooling as a sentence encoder (see the module docstring)."""

    kind = "decoder"  # SentenceEncoder.from_pretrained sends decoder checkpoints here

    def __init__(self, model: Any, params: dict, config: Any, tokenizer: Any, *, pooling: str = "mean",
                 normalize: bool = False, max_length: int = 512, add_eos: bool | None = None,
                 path: Path | None = None):
        mode = canonical_pooling(pooling)
        super().__init__(model, params, config, tokenizer, pooling=mode, normalize=normalize,
                         max_length=max_length, path=path)
        self.pooling_name = pooling
        self.add_eos = (mode == "last") if add_eos is None else bool(add_eos)
        if self.add_eos and tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no EOS token")
        self.skip_prefix = mode != "cls"
        self._llm_forward = _jitted_llm_embed(model, mode)

    @property
    def bidirectional(self) -> bool:
        return self.config.attention_mode == "bidirectional"

    @classmethod
    def load(cls, path: str | os.PathLike, pooling: str | None = None, max_length: int | None = None, *,
             bidirectional: bool | None = None, tokenizer: Any = None, add_eos: bool | None = None,
             normalize: bool | None = None, **options: Any) -> "LlmSentenceEncoder":
        """Load a ``.gguf`` file or an HF Llama/Qwen2 directory as a sentence encoder.

        ``tokenizer``: a tokenizer object or directory (default: from the checkpoint; GGUF
        metadata for ``.gguf``). ``options``: ``dtype``, ``attention_implementation``.

        Arguments left None take the directory's ``config.json`` entry ``jaxbert_embedding``
        (written by the ``llm_embedding`` training task's export: ``pooling``, ``attention_mode``,
        ``add_eos``, ``max_length``, ``normalize``) when it has one, else the defaults: mean
        pooling, bidirectional attention, no normalisation.
        """
        from jaxbert.models.llm.hf import load_llm, load_llm_tokenizer

        saved = _saved_embedding_settings(Path(path).expanduser())
        pooling = saved.get("pooling") if pooling is None else pooling
        if bidirectional is None:
            bidirectional = saved.get("attention_mode", "bidirectional") == "bidirectional"
        add_eos = saved.get("add_eos") if add_eos is None else add_eos
        max_length = saved.get("max_length") if max_length is None else max_length
        normalize = bool(saved.get("normalize", False)) if normalize is None else normalize

        options = cls.model_options(options, extra=_OWN_KEYWORDS)
        check_max_length(max_length)
        pooling = "mean" if pooling is None else pooling
        canonical_pooling(pooling)  # fail before loading weights
        path = Path(path).expanduser()
        pre = load_llm(path, attention_mode="bidirectional" if bidirectional else "causal", **options)
        tok = load_llm_tokenizer(path, pre.config, tokenizer)
        max_length = pick_max_length(max_length, pre.config.max_position_embeddings, tok, limit=512)
        return cls(pre.model, pre.params, pre.config, tok, pooling=pooling, normalize=normalize,
                   max_length=max_length, add_eos=add_eos, path=path)

    def __repr__(self) -> str:
        return (f"LlmSentenceEncoder(path={str(self.path)!r}, dim={self.dim}, pooling={self.pooling_name!r}, "
                f"bidirectional={self.bidirectional}, add_eos={self.add_eos}, max_length={self.max_length})")

    # ------------------------------------------------------------------ tokenization

    def tokenize_with_lengths(self, texts: list[str], instruction: str | Sequence[str] | None = None
                              ) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text (special prefix + instruction + text [+ EOS]) and per-row counts of
        leading tokens excluded from pooling. The text is truncated so the total fits ``max_length``."""
        tok = self.tokenizer
        if self.lowercase:
            texts = [t.lower() for t in texts]
        prefix = tok("", add_special_tokens=True)["input_ids"]
        eos_id = tok.eos_token_id
        prefix = [t for t in prefix if t != eos_id]  # some tokenizers wrap empty input in BOS ... EOS
        if instruction is None or isinstance(instruction, str):
            instr = [tok(instruction, add_special_tokens=False)["input_ids"] if instruction else []] * len(texts)
        else:
            instruction = list(instruction)
            if len(instruction) != len(texts):
                raise ValueError(f"{len(instruction)} instructions for {len(texts)} texts")
            instr = [tok(i, add_special_tokens=False)["input_ids"] if i else [] for i in instruction]
        body = tok(texts, add_special_tokens=False)["input_ids"]
        tail = [eos_id] if self.add_eos else []
        ids, skip = [], []
        for ins, text in zip(instr, body):
            head = prefix + ins
            room = self.max_length - len(head) - len(tail)
            if room < 1:
                raise ValueError(f"instruction of {len(ins)} tokens leaves no room for text at max_length={self.max_length}")
            ids.append(head + text[:room] + tail)
            skip.append(len(head) if self.skip_prefix else len(ins) if ins else 0)
        return ids, np.asarray(skip, np.int64)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenize_with_lengths(texts)[0]

    # ------------------------------------------------------------------ encoding

    def encode(self, texts: str | Iterable[str], batch_size: int = 64, normalize_embeddings: bool = False,
               show_progress_bar: bool = False, instruction: str | Sequence[str] | None = None) -> np.ndarray:
        """Embed ``texts`` -> float32 ``[n, dim]`` (``[dim]`` for one ``str``), rows in input order.

        ``instruction``: one string for all texts or one per text; its tokens are seen by the model
        but not pooled.
        """
        single, texts, batch_size = self._check(texts, batch_size)
        normalize = self.normalize or bool(normalize_embeddings)
        ids, skip = self.tokenize_with_lengths(texts, instruction)
        n = len(ids)
        lengths = np.fromiter((len(x) for x in ids), np.int64, count=n)
        out = np.empty((n, self.dim), np.float32)
        pending: collections.deque = collections.deque()

        def collect():
            rows_idx, result = pending.popleft()
            out[rows_idx] = np.asarray(result)[: len(rows_idx)]

        for idx, rows, seq in self._plan(lengths, batch_size):
            input_ids = np.full((rows, seq), self._pad_id, np.int32)
            mask = np.zeros((rows, seq), np.int32)
            embed = np.zeros((rows, seq), np.int32)
            for r, i in enumerate(idx):
                L = len(ids[i])
                input_ids[r, :L] = ids[i]
                mask[r, :L] = 1
                embed[r, skip[i]:L] = 1
            pending.append((idx, self._llm_forward(self._params, input_ids, mask, embed, normalize=normalize)))
            if len(pending) > _IN_FLIGHT:
                collect()
        while pending:
            collect()
        return out[0] if single else out

    def warmup(self, texts, batch_size: int = 64, normalize_embeddings: bool = False):
        _, texts, batch_size = self._check(texts, batch_size)
        normalize = self.normalize or bool(normalize_embeddings)
        lengths = np.fromiter((len(x) for x in self.tokenize(texts)), np.int64)
        shapes = list(dict.fromkeys((rows, seq) for _, rows, seq in self._plan(lengths, batch_size)))
        for shape in shapes:
            spec = jax.ShapeDtypeStruct(shape, np.int32)
            self._llm_forward.lower(self._params, spec, spec, spec, normalize=normalize).compile()
        return shapes
