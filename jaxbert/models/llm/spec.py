"""Registry entries of the Llama-family decoders: ``llama`` and ``qwen2`` (one :class:`LlmModel`)."""

from jaxbert.models.architecture import ArchitectureSpec
from jaxbert.models.llm import hf
from jaxbert.models.llm.model import LlmConfig, LlmModel
from jaxbert.models.llm.presets import LLAMA, QWEN2


def _spec(model_type: str, hf_class: str, presets) -> ArchitectureSpec:
    return ArchitectureSpec(
        model_type=model_type, kind="decoder", config_cls=LlmConfig, backbone=LlmModel, presets=presets,
        from_hf_dict=LlmConfig.from_hf_dict, to_hf_dict=LlmConfig.to_hf_dict, keys=hf.KEYS,
        hf_architectures={"base": hf_class}, prepare_state=hf.prepare_state,
        accepts_file=hf.is_gguf_file, read_file=hf.read_gguf_file)


SPECS = [_spec("llama", "LlamaForCausalLM", LLAMA), _spec("qwen2", "Qwen2ForCausalLM", QWEN2)]
