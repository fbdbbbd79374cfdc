"""The configurable encoder block shared by the BERT family (BERT, MosaicBERT, ModernBERT, ...)."""
