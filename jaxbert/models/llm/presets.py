"""LLM presets per model type (SmolLM2-135M and tiny test shapes) and their config factory; looked up
through :func:`jaxbert.models.registry.get`."""

from __future__ import annotations

from typing import Any, Callable

from jaxbert.models.llm.model import LlmConfig


def smollm2_135m_config(**kw: Any) -> LlmConfig:
    """SmolLM2-135M(-Instruct): Llama, 30 layers, hidden 576, 9 heads / 3 k/v heads, tied embeddings."""
    base = dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=8192, rms_norm_eps=1e-5,
                rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                initializer_range=0.041666666666666664)
    return LlmConfig(**{**base, **kw})


LLAMA: dict[str, Callable[[], LlmConfig]] = {
    "smollm2-135m": smollm2_135m_config,
    "llama-tiny": lambda: LlmConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                                    rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0),
}
QWEN2: dict[str, Callable[[], LlmConfig]] = {
    "qwen2-tiny": lambda: LlmConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                                    rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=True,
                                    tie_word_embeddings=True, pad_token_id=0, model_type="qwen2"),
}
