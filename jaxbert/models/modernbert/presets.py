"""Presets of the configurable block: ModernBERT (``model_type="modernbert"``, HF-convertible) and
MosaicBERT (``model_type="jaxbert-encoder"``: no HF layout in jaxbert), with small test shapes.

The configs themselves are built by :func:`jaxbert.models.transformer.model.preset`."""

from __future__ import annotations

import functools
from typing import Any, Callable

from jaxbert.models.transformer.model import preset

MODERNBERT: dict[str, Callable[[], Any]] = {
    n: functools.partial(preset, n) for n in ("modernbert-base", "modernbert-large", "modernbert-tiny")}
MOSAICBERT: dict[str, Callable[[], Any]] = {n: functools.partial(preset, n) for n in ("mosaicbert-base", "mosaicbert-tiny")}
