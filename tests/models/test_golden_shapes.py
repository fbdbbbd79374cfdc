"""Parameter shapes of every registry preset stay what ``tests/models/golden/param_shapes.json`` records.

A changed shape, a renamed or dropped parameter changes checkpoints and converter tables; when
that is intended, regenerate the golden file with ``tests/models/golden/make_param_shapes.py``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from jaxbert.models import registry

GOLDEN_DIR = Path(__file__).with_name("golden")


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_param_shapes", GOLDEN_DIR / "make_param_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


maker = _load_maker()


@pytest.fixture(scope="module")
def current():
    return maker.compute_param_shapes()


@pytest.fixture(scope="module")
def golden():
    return json.loads(maker.GOLDEN_PATH.read_text())


def _diff(golden_shapes: dict, current_shapes: dict) -> list[str]:
    lines = []
    for path in sorted(set(golden_shapes) | set(current_shapes)):
        g, c = golden_shapes.get(path), current_shapes.get(path)
        if g != c:
            lines.append(f"  {path}: golden {g if g is not None else '(absent)'} "
                         f"-> now {c if c is not None else '(absent)'}")
    return lines


def test_presets_match_golden_file(current, golden):
    assert sorted(golden) == sorted(current) == registry.names(kind="encoder"), (
        f"preset list changed: golden {sorted(golden)} vs registry {registry.names(kind='encoder')}; "
        "rerun tests/models/golden/make_param_shapes.py if intended")
    problems = []
    for name in registry.names(kind="encoder"):
        for task in maker.TASKS:
            g, c = golden[name][task], current[name][task]
            lines = _diff(g["shapes"], c["shapes"])
            if g["total"] != c["total"]:
                lines.append(f"  total: golden {g['total']:,} -> now {c['total']:,}")
            if lines:
                problems.append(f"{name} / {task}:\n" + "\n".join(lines))
    assert not problems, ("parameter shapes differ from tests/models/golden/param_shapes.json "
                          "(rerun tests/models/golden/make_param_shapes.py if intended):\n" + "\n".join(problems))


# Published parameter counts of transformers.BertModel (with pooler) / BertForMaskedLM.
PUBLISHED = {
    ("bert-base", "base"): 109_482_240,
    ("bert-large", "base"): 335_141_888,
    ("bert-base", "mlm"): 109_514_298,
    ("minilm-l6-h384", "base"): 22_713_216,  # sentence-transformers/all-MiniLM-L6-v2
}


@pytest.mark.parametrize("name,task", sorted(PUBLISHED))
def test_published_parameter_counts(current, name, task):
    assert current[name][task]["total"] == PUBLISHED[name, task]


def test_task_heads_add_expected_params(current):
    """Heads add exactly the HF head sizes on top of the (pooler-less where HF drops it) backbone."""
    for name in registry.names(kind="encoder"):
        cfg, _ = registry.get(name)
        e, v = cfg.hidden_size, cfg.vocab_size
        pooler = e * e + e
        base = current[name]["base"]["total"]
        assert current[name]["sequence_classification"]["total"] == base + 3 * e + 3, name
        # MLM drops the pooler, adds transform dense + LayerNorm + output bias (decoder is tied).
        # Configs with mlm_head_options (jaxbert/models/encoder.py) may drop biases (ModernBERT).
        head = dict(use_bias=True, norm_bias=True, decoder_bias=True)
        head.update({k: v for k, v in getattr(cfg, "mlm_head_options", dict)().items() if k in head})
        if not getattr(cfg, "add_pooling_layer", True):
            pooler = 0
        expected = (base - pooler + e * e + e * head["use_bias"] + e * (1 + head["norm_bias"])
                    + v * head["decoder_bias"])
        assert current[name]["mlm"]["total"] == expected, name
        assert ("mlm_head/bias" in current[name]["mlm"]["shapes"]) == head["decoder_bias"]
        assert not any(p.startswith("encoder/pooler") for p in current[name]["mlm"]["shapes"])


def test_diff_names_changed_paths():
    """The failure message lists each differing path with both shapes."""
    lines = _diff({"a/kernel": [2, 3], "b/bias": [3]}, {"a/kernel": [2, 4], "c/bias": [1]})
    assert lines == ["  a/kernel: golden [2, 3] -> now [2, 4]", "  b/bias: golden [3] -> now (absent)",
                     "  c/bias: golden (absent) -> now [1]"]
