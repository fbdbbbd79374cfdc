"""jaxbert: BERT-family encoders and embedding models in JAX/Flax."""

from jaxbert.encoder import SentenceEncoder

__all__ = ["SentenceEncoder"]
