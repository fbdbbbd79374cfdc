"""Regenerate ``param_shapes.json``: parameter shapes of every registry preset for a few tasks.

    .venv/bin/python tests/models/golden/make_param_shapes.py

Shapes come from ``jax.eval_shape`` (nothing is allocated, so bert-large is cheap).
``tests/models/test_golden_shapes.py`` imports :func:`compute_param_shapes` from here and compares
its result with the committed JSON; rerun this script only when a shape change is intended.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jax
import numpy as np
import flax.linen as nn
from flax import traverse_util

from jaxbert.models import registry
from jaxbert.models.task_models import build_task_model

GOLDEN_PATH = Path(__file__).with_name("param_shapes.json")
# task -> num_labels passed to build_task_model
TASKS = {"base": None, "mlm": None, "sequence_classification": 3}


def param_shapes(model: nn.Module, seq_len: int = 8) -> dict[str, list[int]]:
    """``{"a/b/kernel": [d0, d1, ...]}`` for ``model``'s params, computed abstractly."""
    ids = np.zeros((1, seq_len), np.int32)
    abstract = jax.eval_shape(lambda r: model.init(r, ids), jax.random.key(0))
    flat = traverse_util.flatten_dict(nn.unbox(abstract["params"]))
    return {"/".join(k): list(v.shape) for k, v in sorted(flat.items())}


def compute_param_shapes() -> dict:
    """``{preset: {task: {"shapes": {path: shape}, "total": n_params}}}`` for all presets."""
    out = {}
    for name in registry.names(kind="encoder"):
        config, backbone = registry.get(name)
        out[name] = {}
        for task, num_labels in TASKS.items():
            shapes = param_shapes(build_task_model(config, backbone, task, num_labels))
            out[name][task] = {"total": sum(math.prod(s) for s in shapes.values()), "shapes": shapes}
    return out


def dumps(golden: dict) -> str:
    """Indented JSON with each shape list on one line (readable diffs)."""
    text = json.dumps(golden, indent=1, sort_keys=True)
    return re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


if __name__ == "__main__":
    GOLDEN_PATH.write_text(dumps(compute_param_shapes()))
    print(f"wrote {GOLDEN_PATH}")
