"""Inference: sentence encoders over any registered architecture.

``SentenceEncoder.from_pretrained(path)`` (also :func:`load`) reads the checkpoint's architecture
from the registry and returns the encoder class of its ``kind``: :class:`SentenceEncoder` for
encoders, :class:`LlmSentenceEncoder` for decoders. Importing this package defines both, so
every kind is known before the first load.
"""

from jaxbert.inference.sentence_encoder import ENCODERS, SentenceEncoder, architecture_of
from jaxbert.inference.llm_encoder import LlmSentenceEncoder

load = SentenceEncoder.from_pretrained

__all__ = ["ENCODERS", "LlmSentenceEncoder", "SentenceEncoder", "architecture_of", "load"]
