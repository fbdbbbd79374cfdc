"""Checkpoint conversion. Importing the package registers every architecture's key table in
:data:`jaxbert.convert.hf.ARCHITECTURES` (BERT and ModernBERT live in ``hf.py``; M2-BERT in ``jaxbert/models/m2/hf.py``)."""

from jaxbert.models.m2 import hf as _m2  # noqa: F401  (registers "m2_bert")
