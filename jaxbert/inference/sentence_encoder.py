"""Sentence embeddings from a BERT-family checkpoint: the JAX counterpart of ``SentenceTransformer``.

::

    from jaxbert import SentenceEncoder
    enc = SentenceEncoder.from_pretrained(jaxbert.assets.fetch("minilm"))
    emb = enc.encode(["A man is eating food.", "A man is riding a horse."])  # [2, 384] float32
    vec = enc.encode("one sentence")                                           # [384]

How :meth:`SentenceEncoder.encode` batches (the shapes ``jit`` sees):

1. All texts are tokenized once (fast tokenizer, truncation at ``max_length``), then sorted by
   token count, longest first, so each batch holds sequences of similar length.
2. Each batch is padded on the right to the smallest *length bucket* >= its longest sequence.
   Buckets (:func:`length_buckets`): multiples of 16 up to 128, of 32 up to 512, of 128 beyond,
   each capped at ``max_length``, plus ``max_length`` itself. For ``max_length=256`` that is 12
   buckets: 16 32 48 64 80 96 112 128 160 192 224 256.
3. Full batches have exactly ``batch_size`` rows. Only the last batch (the shortest texts) can
   be partial; its rows are padded to the next *row bucket* (:func:`row_buckets`): powers of
   two below ``batch_size``, and ``batch_size`` itself (1 2 4 8 16 32 64 for 64), so encoding a
   single query costs one row, not 64.

So ``jit`` compiles at most ``len(length_buckets) x len(row_buckets)`` shapes per
``(batch_size, normalize)`` pair over the encoder's life (12 x 7 = 84 for MiniLM at batch 64),
and one ``encode`` call compiles at most ``len(length_buckets) + 1`` new shapes (the full-batch
bucket lengths it meets, plus the partial last batch). Compiled shapes are cached per
(model config, pooling), so reloading the same model does not recompile; :meth:`warmup`
compiles a corpus's shapes ahead of time. The jitted function is the whole path: encoder ->
pooling (float32) -> optional L2 normalisation, so each batch returns only ``[rows, dim]``.

Batches are dispatched without waiting for results (JAX dispatch is asynchronous); results are
copied back to the host with a lag of a few batches, so host-side batch preparation overlaps
device compute and there is no host sync per batch.
"""

from __future__ import annotations

import collections
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from jaxbert.compiler_options import compiler_options
from jaxbert.convert.hf import read_hf_config
from jaxbert.models import registry
from jaxbert.models.architecture import ArchitectureSpec
from jaxbert.models.pooling import check_mode, l2_normalize, pool, read_st_pooling, st_transformer_dir

#: Model options every sentence encoder's ``load(**options)`` accepts -> allowed values.
LOAD_OPTIONS = {
    "dtype": ("float32", "bfloat16"),
    "attention_implementation": ("xla", "dot_product_attention"),
}
_IN_FLIGHT = 8  # batches dispatched ahead of the host copy-back


def length_buckets(max_length: int) -> list[int]:
    """Padded sequence lengths used by :meth:`SentenceEncoder.encode` for a given ``max_length``."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    steps = [*range(16, 129, 16), *range(160, 513, 32), *range(640, max(max_length, 640) + 1, 128)]
    return sorted({b for b in steps if b < max_length} | {max_length})


def row_buckets(batch_size: int) -> list[int]:
    """Padded batch sizes for the last (partial) batch: powers of two < ``batch_size``, and ``batch_size``."""
    out, r = [], 1
    while r < batch_size:
        out.append(r)
        r *= 2
    return out + [batch_size]


def _smallest_at_least(buckets: Sequence[int], n: int) -> int:
    return buckets[int(np.searchsorted(buckets, n))]


def check_max_length(max_length: Any) -> None:
    """An explicit ``max_length`` must be an int >= 2 ([CLS]/BOS and one token); None is the default."""
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool)
                                   or max_length < 2):
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")


def pick_max_length(max_length: int | None, cap: int, tokenizer: Any, *, preferred: int | None = None,
                    limit: int | None = None) -> int:
    """The encoder's ``max_length``: an explicit value (checked against ``cap``, the model's
    ``max_position_embeddings``), else ``preferred`` (a directory's setting) or the tokenizer's
    ``model_max_length`` (when it is a real number, not transformers' 1e30 "unset") or ``cap``,
    capped at ``cap`` and ``limit``."""
    check_max_length(max_length)
    if max_length is not None:
        if max_length > cap:
            raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings={cap}")
        return int(max_length)
    tok_max = getattr(tokenizer, "model_max_length", None)
    tok_max = tok_max if isinstance(tok_max, int) and 0 < tok_max < 1_000_000 else None
    return int(min(preferred or tok_max or cap, cap, limit or cap))


def _embed(params, input_ids, attention_mask, *, model, mode, normalize):
    out = model.apply({"params": params}, input_ids, attention_mask)
    x = pool(out.last_hidden_state, attention_mask, mode)
    return l2_normalize(x) if normalize else x


@functools.lru_cache(maxsize=16)
def _jitted_embed(model: Any, modes: tuple[str, ...]):
    """One jitted forward per (module, pooling): Linen modules compare by config, so encoders of
    the same architecture (e.g. reloaded, or an HF dir and its sentence-transformers twin) share
    compiled shapes."""
    return jax.jit(functools.partial(_embed, model=model, mode=modes), static_argnames=("normalize",),
                   compiler_options=compiler_options())


# ArchitectureSpec.kind -> the sentence-encoder class that loads it. SentenceEncoder serves "encoder";
# subclasses add their kind when defined (jaxbert.inference imports every one of them).
ENCODERS: dict[str, type] = {}


def architecture_of(path: str | os.PathLike) -> ArchitectureSpec:
    """The spec of a model directory (HF or sentence-transformers) or single-file checkpoint, from its
    config alone (no weights read)."""
    path = Path(path).expanduser()
    if path.is_file():
        spec = registry.spec_for_file(path)
        if spec is None:
            raise NotADirectoryError(f"{path} is not a directory (expected a sentence-transformers or HF model "
                                     "directory) nor a single-file checkpoint a registered architecture reads")
        return spec
    model_dir = st_transformer_dir(path) if (path / "modules.json").is_file() else path
    return registry.spec_for_hf_config(read_hf_config(model_dir), model_dir)


class SentenceEncoder:
    """A BERT-family encoder + pooling (+ normalisation) that turns texts into embedding vectors.

    Build with :meth:`from_pretrained`. Properties: ``dim`` (embedding size), ``max_length``
    (tokens per text after truncation, [CLS]/[SEP] included), ``config`` (the model config),
    ``params`` (plain param dict), ``pooling`` (mode or tuple of modes), ``normalize`` (True
    when the model directory asks for normalised outputs), ``tokenizer``, ``model``.
    """

    #: The :attr:`ArchitectureSpec.kind <jaxbert.models.architecture.ArchitectureSpec.kind>` this class
    #: loads; a subclass with another kind registers itself in :data:`ENCODERS` when it is defined.
    kind = "encoder"

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        ENCODERS[cls.kind] = cls

    def __init__(self, model: Any, params: dict, config: Any, tokenizer: Any, *,
                 pooling: str | tuple[str, ...] = "mean", normalize: bool = False, max_length: int = 512,
                 lowercase: bool = False, path: Path | None = None):
        self.model = model
        self._params = params
        self._config = config
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        self._max_length = int(max_length)
        self.path = path
        self.lowercase = bool(lowercase)  # sentence_bert_config.json do_lower_case
        self._modes = check_mode(pooling)
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = int(pad if pad is not None else getattr(config, "pad_token_id", 0) or 0)
        self._forward = _jitted_embed(model, self._modes)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, pooling: str | Sequence[str] | None = None,
                        max_length: int | None = None, **options: Any) -> "SentenceEncoder":
        """Load any registered architecture's checkpoint as a sentence encoder.

        The checkpoint's :class:`~jaxbert.models.architecture.ArchitectureSpec` (see
        :func:`architecture_of`) names its ``kind``; the encoder class of that kind loads it
        (its :meth:`load`). Encoders load as :class:`SentenceEncoder`; Llama / Qwen2 decoders (a
        ``.gguf`` file or an HF dir with that ``model_type``) as
        :class:`jaxbert.inference.llm_encoder.LlmSentenceEncoder`, with the extra options
        ``bidirectional`` (default True), ``add_eos``, ``tokenizer``, ``normalize`` and LLM pooling
        names (``mean``, ``weighted_mean``, ``last_token``, ``first_token``).
        """
        kind = architecture_of(path).kind
        if kind not in ENCODERS:
            raise ValueError(f"{path}: no sentence encoder for architectures of kind {kind!r}; "
                             f"known: {sorted(ENCODERS)}")
        return ENCODERS[kind].load(path, pooling=pooling, max_length=max_length, **options)

    @classmethod
    def load(cls, path: str | os.PathLike, pooling: str | Sequence[str] | None = None,
             max_length: int | None = None, **options: Any) -> "SentenceEncoder":
        """Load a sentence-transformers directory (with ``modules.json``) or a plain HF encoder directory.

        * sentence-transformers dir: pooling from ``1_Pooling/config.json``, normalisation when
          ``modules.json`` lists a ``Normalize`` module, ``max_length`` from
          ``sentence_bert_config.json`` (``max_seq_length``; its ``do_lower_case`` is honoured).
        * plain HF dir: ``mean`` pooling, no normalisation, ``max_length`` from the tokenizer's
          ``model_max_length``.

        In both cases ``max_length`` is capped at the model's ``max_position_embeddings``;
        ``pooling`` / ``max_length`` given here override the directory's values (an explicit
        ``max_length`` above ``max_position_embeddings`` is an error).

        Options (keyword-only, validated):
        ``dtype="float32"|"bfloat16"`` compute dtype (params stay float32; pooling is float32),
        ``attention_implementation="dot_product_attention"`` (default here: no dropout at
        inference, cuDNN on GPU, faster on CPU) ``|"xla"`` (the reference einsum path).
        """
        from jaxbert.convert.hf import load_pretrained, read_hf_config
        from jaxbert.data.tokenization import check_vocab, load_tokenizer

        options = cls.model_options(options)
        check_max_length(max_length)
        path = Path(path).expanduser()
        if (path / "modules.json").is_file():
            st_mode, normalize, st_max = read_st_pooling(path)
            model_dir = st_transformer_dir(path)
            sbert = model_dir / "sentence_bert_config.json"
            lowercase = bool(json.loads(sbert.read_text()).get("do_lower_case")) if sbert.is_file() else False
        else:
            st_mode, normalize, st_max, lowercase = "mean", False, None, False
            model_dir = path
        mode = st_mode if pooling is None else pooling
        modes = check_mode(mode)
        # Errors name the path (a missing directory, no config.json); an export interrupted mid-swap is recovered.
        cap = read_hf_config(model_dir).get("max_position_embeddings", 512)
        if max_length is not None and max_length > cap:
            raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings={cap}")
        # The BERT pooler (tanh dense on [CLS]) is not part of sentence embeddings: not loaded.
        pre = load_pretrained(model_dir, task="base", add_pooling_layer=False, **options)
        config = pre.config
        tokenizer = load_tokenizer(model_dir)  # no tokenizer files: an error naming the files expected
        check_vocab(tokenizer, config.vocab_size, pretrained=True, source=model_dir)
        max_length = pick_max_length(max_length, cap, tokenizer, preferred=st_max)
        return cls(pre.model, pre.params, config, tokenizer, pooling=mode if len(modes) > 1 else modes[0],
                   normalize=normalize, max_length=max_length, lowercase=lowercase, path=path)

    @classmethod
    def model_options(cls, options: dict[str, Any], extra: Sequence[str] = ()) -> dict[str, Any]:
        """``options`` checked against :data:`LOAD_OPTIONS` (the one check of every encoder's
        ``load``), with the inference default ``attention_implementation="dot_product_attention"``.

        Inference never uses attention dropout, so ``jax.nn.dot_product_attention`` is always valid:
        cuDNN fused attention on GPU; on CPU one MiniLM batch [64, 256] (1 thread, AMD EPYC) took
        6.4 s vs 8.4 s with the "xla" einsum reference (torch: 5.2 s). Same at [64, 32].
        ``extra``: the subclass's own keyword names, listed in the unknown-option message.
        """
        unknown = sorted(set(options) - set(LOAD_OPTIONS))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unknown option(s) {unknown}; "
                            f"known: {sorted([*LOAD_OPTIONS, *extra])}")
        for key, value in options.items():
            if value not in LOAD_OPTIONS[key]:
                raise ValueError(f"{key}={value!r}; expected one of {LOAD_OPTIONS[key]}")
        return {"attention_implementation": "dot_product_attention", **options}

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self._config.hidden_size * len(self._modes)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def config(self) -> Any:
        return self._config

    @property
    def params(self) -> dict:
        return self._params

    def __repr__(self) -> str:
        return (f"SentenceEncoder(path={str(self.path)!r}, dim={self.dim}, pooling={self.pooling!r}, "
                f"normalize={self.normalize}, max_length={self.max_length}, dtype={self._config.dtype!r})")

    # ------------------------------------------------------------------ encoding

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text ([CLS] ... [SEP]), truncated to ``max_length``; no padding.

        Texts are lower-cased first when the sentence-transformers config says ``do_lower_case``
        (as sentence-transformers does; uncased tokenizers lower-case anyway).
        """
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return self.tokenizer(texts, truncation=True, max_length=self._max_length, padding=False,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def _check(self, texts: str | Iterable[str], batch_size: int) -> tuple[bool, list[str], int]:
        from jaxbert.data.tokenization import check_texts

        single, texts = check_texts(texts, "texts", single_ok=True)
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return single, texts, int(batch_size)

    def _plan(self, lengths: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, int, int]]:
        """Batches as ``(row indices into the input, padded rows, padded length)``, longest first."""
        order = np.argsort(-lengths, kind="stable")
        lbuckets, rbuckets = length_buckets(self._max_length), row_buckets(batch_size)
        plan = []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            rows = batch_size if len(idx) == batch_size else _smallest_at_least(rbuckets, len(idx))
            plan.append((idx, rows, _smallest_at_least(lbuckets, int(lengths[idx[0]]))))
        return plan

    def encode(self, texts: str | Iterable[str], batch_size: int = 64, normalize_embeddings: bool = False,
               show_progress_bar: bool = False) -> np.ndarray:
        """Embed ``texts``: float32 ``[n, dim]`` numpy array, rows in input order.

        A single ``str`` returns a 1-D ``[dim]`` vector (as ``SentenceTransformer.encode`` does).
        Outputs are L2-normalised when the model directory has a ``Normalize`` module (always,
        like sentence-transformers) or when ``normalize_embeddings=True``.

        Inputs are checked by :func:`jaxbert.data.tokenization.check_texts`: TypeError for None,
        bytes, or an element that is not a ``str`` (index and type named); ValueError for no texts
        (``texts is empty``), a lone surrogate (index and position named) and ``batch_size < 1``.
        """
        single, texts, batch_size = self._check(texts, batch_size)
        normalize = self.normalize or bool(normalize_embeddings)
        ids = self.tokenize(texts)
        n = len(ids)
        lengths = np.fromiter((len(x) for x in ids), np.int64, count=n)
        flat = np.fromiter((t for x in ids for t in x), np.int32, count=int(lengths.sum()))
        offsets = np.cumsum(lengths) - lengths

        out = np.empty((n, self.dim), np.float32)
        pending: collections.deque = collections.deque()
        progress = None
        if show_progress_bar:
            from tqdm.auto import tqdm
            progress = tqdm(total=n, desc="encode", unit="text")

        def collect():
            rows_idx, result = pending.popleft()
            out[rows_idx] = np.asarray(result)[: len(rows_idx)]
            if progress is not None:
                progress.update(len(rows_idx))

        for idx, rows, seq in self._plan(lengths, batch_size):
            lens = lengths[idx]
            input_ids = np.full((rows, seq), self._pad_id, np.int32)
            mask = np.zeros((rows, seq), np.int32)
            # Scatter the ragged token lists into the padded block without a Python loop per row.
            row_of = np.repeat(np.arange(len(idx)), lens)
            col = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
            input_ids[row_of, col] = flat[np.repeat(offsets[idx], lens) + col]
            mask[row_of, col] = 1
            pending.append((idx, self._forward(self._params, input_ids, mask, normalize=normalize)))
            if len(pending) > _IN_FLIGHT:
                collect()
        while pending:
            collect()
        if progress is not None:
            progress.close()
        return out[0] if single else out

    def warmup(self, texts: str | Iterable[str], batch_size: int = 64, normalize_embeddings: bool = False
               ) -> list[tuple[int, int]]:
        """Compile (without running) every batch shape ``encode(texts, batch_size, ...)`` would use.

        For servers and benchmarks: call with representative texts (or the corpus itself) so
        later ``encode`` calls never compile. Returns the ``(rows, length)`` shapes, longest first.
        """
        _, texts, batch_size = self._check(texts, batch_size)
        normalize = self.normalize or bool(normalize_embeddings)
        lengths = np.fromiter((len(x) for x in self.tokenize(texts)), np.int64)
        shapes = list(dict.fromkeys((rows, seq) for _, rows, seq in self._plan(lengths, batch_size)))
        for shape in shapes:
            spec = jax.ShapeDtypeStruct(shape, np.int32)
            self._forward.lower(self._params, spec, spec, normalize=normalize).compile()
        return shapes

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix ``[len(a), len(b)]`` of two embedding arrays (1-D inputs allowed)."""
        a = np.atleast_2d(np.asarray(a, np.float32))
        b = np.atleast_2d(np.asarray(b, np.float32))
        a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
        return a @ b.T


ENCODERS[SentenceEncoder.kind] = SentenceEncoder
