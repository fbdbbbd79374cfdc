"""ModernBERT and MosaicBERT on the configurable block (:mod:`jaxbert.models.transformer`): their config
factories and presets, and ModernBERT's Hugging Face format (config mapping and key table)."""
