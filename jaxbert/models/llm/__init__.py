"""Llama-family decoders (Llama, Qwen2, SmolLM2): model, HF safetensors and GGUF readers, poolings."""
