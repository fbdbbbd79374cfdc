"""Checkpoint conversion. Importing the package registers every architecture's key table in
:data:`jaxbert.convert.hf.ARCHITECTURES` (BERT and ModernBERT live in ``hf.py``; M2-BERT in ``m2.py``)."""

from jaxbert.convert import m2 as _m2  # noqa: F401  (registers "m2_bert")
