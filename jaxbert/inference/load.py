"""One entry point for sentence encoders: :func:`load` picks the encoder class from the registry.

::

    enc = load("/path/to/model")     # SentenceEncoder (encoders) or LlmSentenceEncoder (decoders)
    enc.encode(["a sentence"])

The checkpoint's architecture (``config.json``'s ``model_type``, or a single-file format such as
GGUF) selects its :class:`~jaxbert.models.architecture.ArchitectureSpec`; the spec's ``kind``
selects the class in :data:`ENCODERS`. ``SentenceEncoder.from_pretrained`` calls this function.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from jaxbert.convert.hf import read_hf_config
from jaxbert.inference.llm_encoder import LlmSentenceEncoder
from jaxbert.inference.sentence_encoder import SentenceEncoder
from jaxbert.models import registry
from jaxbert.models.architecture import ArchitectureSpec
from jaxbert.models.pooling import st_transformer_dir

# ArchitectureSpec.kind -> the sentence-encoder class that loads it (each has a ``load`` classmethod).
ENCODERS: dict[str, type[SentenceEncoder]] = {"encoder": SentenceEncoder, "decoder": LlmSentenceEncoder}


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


def load(path: str | os.PathLike, pooling: str | Sequence[str] | None = None, max_length: int | None = None,
         **options: Any) -> SentenceEncoder:
    """Load ``path`` as the sentence encoder of its architecture's kind (see the class ``load`` methods
    for ``pooling``, ``max_length`` and the options each accepts)."""
    kind = architecture_of(path).kind
    if kind not in ENCODERS:
        raise ValueError(f"{path}: no sentence encoder for architectures of kind {kind!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[kind].load(path, pooling=pooling, max_length=max_length, **options)
