"""jaxbert: BERT-family encoders and embedding models in JAX/Flax."""

from jaxbert.inference.sentence_encoder import SentenceEncoder

__all__ = ["SentenceEncoder"]
