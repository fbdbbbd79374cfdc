"""The registry entry of BERT (``model_type="bert"``)."""

from jaxbert.models.bert import hf
from jaxbert.models.bert.model import BertConfig, BertModel
from jaxbert.models.bert.presets import PRESETS
from jaxbert.models.architecture import ArchitectureSpec

SPECS = [ArchitectureSpec(
    model_type="bert", kind="encoder", config_cls=BertConfig, backbone=BertModel, presets=PRESETS,
    has_pooler=True, from_hf_dict=BertConfig.from_hf_dict, to_hf_dict=BertConfig.to_hf_dict, keys=hf.KEYS,
    hf_architectures=hf.HF_ARCHITECTURES)]
