"""M2-BERT presets (80M / 110M, the LoCo 32k shape, a tiny test shape); configs built by
:func:`jaxbert.models.m2.model.preset`."""

from __future__ import annotations

import functools
from typing import Any, Callable

from jaxbert.models.m2 import model

PRESETS: dict[str, Callable[[], Any]] = {n: functools.partial(model.preset, n) for n in model.PRESETS}
