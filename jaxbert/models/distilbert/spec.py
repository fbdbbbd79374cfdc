"""The registry entry of DistilBERT (``model_type="distilbert"``): the configurable encoder block with
DistilBERT's HF format. No presets: DistilBERT models come from checkpoints (``load_pretrained``)."""

from jaxbert.models.architecture import ArchitectureSpec
from jaxbert.models.distilbert import hf
from jaxbert.models.transformer.model import Encoder, EncoderConfig

SPECS = [ArchitectureSpec(
    model_type=hf.MODEL_TYPE, kind="encoder", config_cls=EncoderConfig, backbone=Encoder,
    from_hf_dict=hf.config_from_hf, to_hf_dict=hf.config_to_hf, keys=hf.KEYS, hf_architectures=hf.HF_ARCHITECTURES)]
