"""The registry entry of Monarch Mixer BERT (``model_type="m2_bert"``; reference configs say ``"bert"``)."""

from jaxbert.models.architecture import ArchitectureSpec
from jaxbert.models.m2 import hf
from jaxbert.models.m2.model import M2Config, M2Model
from jaxbert.models.m2.presets import PRESETS

SPECS = [ArchitectureSpec(
    model_type="m2_bert", kind="encoder", config_cls=M2Config, backbone=M2Model, presets=PRESETS, has_pooler=True,
    from_hf_dict=M2Config.from_hf_dict, to_hf_dict=M2Config.to_hf_dict, keys=hf.KEYS,
    hf_architectures=hf.M2_HF_ARCHITECTURES, prepare_state=hf.prepare_state, export_extras=hf.export_extras,
    claims_hf_config=hf.is_reference_config)]
