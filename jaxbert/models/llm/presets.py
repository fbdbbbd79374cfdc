"""LLM presets per model type (SmolLM2-135M and tiny test shapes); configs built by
:func:`jaxbert.models.llm.model.preset`."""

from __future__ import annotations

import functools
from typing import Any, Callable

from jaxbert.models.llm import model

LLAMA: dict[str, Callable[[], Any]] = {n: functools.partial(model.preset, n) for n in ("smollm2-135m", "llama-tiny")}
QWEN2: dict[str, Callable[[], Any]] = {n: functools.partial(model.preset, n) for n in ("qwen2-tiny",)}
