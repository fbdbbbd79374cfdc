"""Registry entries of the configurable block: ``modernbert`` (transformers' ModernBERT) and
``jaxbert-encoder`` (every other configuration of the block, e.g. MosaicBERT; no HF format)."""

from jaxbert.models.architecture import ArchitectureSpec
from jaxbert.models.modernbert import hf
from jaxbert.models.modernbert.presets import MODERNBERT, MOSAICBERT
from jaxbert.models.transformer.model import Encoder, EncoderConfig

SPECS = [
    ArchitectureSpec(model_type="modernbert", kind="encoder", config_cls=EncoderConfig, backbone=Encoder,
                     presets=MODERNBERT, from_hf_dict=hf.config_from_hf, to_hf_dict=hf.config_to_hf,
                     keys=hf.KEYS, hf_architectures=hf.HF_ARCHITECTURES),
    ArchitectureSpec(model_type="jaxbert-encoder", kind="encoder", config_cls=EncoderConfig, backbone=Encoder,
                     presets=MOSAICBERT),
]
