"""ModernBERT and MosaicBERT on the configurable block (:mod:`jaxbert.models.transformer`): presets and
ModernBERT's Hugging Face key table."""
