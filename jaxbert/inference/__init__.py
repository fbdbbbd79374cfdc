"""Inference: sentence encoders over any registered architecture; :func:`jaxbert.inference.load.load` picks
the encoder class (``SentenceEncoder`` / ``LlmSentenceEncoder``) from the architecture's ``kind``."""
