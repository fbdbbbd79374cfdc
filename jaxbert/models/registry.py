"""Named model presets: ``name -> (config, backbone module)``.

Adding an architecture = one module file + one converter key table + entries here.
"""

from __future__ import annotations

from typing import Any, Callable

from jaxbert.models.bert.model import BertConfig, BertModel
from jaxbert.models.transformer import model as _encoder
from jaxbert.models.transformer.model import Encoder, EncoderConfig

# name -> (config factory, backbone class)
_PRESETS: dict[str, tuple[Callable[[], Any], Any]] = {}


def register(name: str, config_fn: Callable[[], Any], backbone: Any) -> None:
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    _PRESETS[name] = (config_fn, backbone)


def _bert(layers: int, hidden: int, heads: int, **kw) -> Callable[[], BertConfig]:
    return lambda: BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                              intermediate_size=4 * hidden, **kw)


# Google's compact BERTs (Turc et al. 2019, "Well-Read Students") and the two classic sizes.
register("bert-tiny", _bert(2, 128, 2), BertModel)
register("bert-mini", _bert(4, 256, 4), BertModel)
register("bert-small", _bert(4, 512, 8), BertModel)
register("bert-medium", _bert(8, 512, 8), BertModel)
register("bert-base", _bert(12, 768, 12), BertModel)
register("bert-large", _bert(24, 1024, 16), BertModel)
# sentence-transformers/all-MiniLM-L6-v2 shape.
register("minilm-l6-h384", _bert(6, 384, 12), BertModel)
# The configurable block (jaxbert/models/encoder.py): MosaicBERT and ModernBERT, plus small test shapes.
for _name in ("mosaicbert-base", "mosaicbert-tiny", "modernbert-base", "modernbert-large", "modernbert-tiny"):
    register(_name, lambda _n=_name: _encoder.preset(_n), Encoder)


def names() -> list[str]:
    return sorted(_PRESETS)


def get(name: str, **overrides: Any) -> tuple[Any, Any]:
    """Return ``(config, backbone_class)`` for preset ``name``; ``overrides`` replace config fields."""
    if name not in _PRESETS:
        import difflib
        close = difflib.get_close_matches(name, _PRESETS, n=3)
        raise KeyError(f"unknown model preset {name!r}" + (f"; did you mean {close}?" if close else "")
                       + f" Known: {names()}")
    config_fn, backbone = _PRESETS[name]
    cfg = config_fn()
    return (cfg.replace(**overrides) if overrides else cfg), backbone


BACKBONES_BY_MODEL_TYPE: dict[str, tuple[type, Any]] = {"bert": (BertConfig, BertModel),
                                                          "modernbert": (EncoderConfig, Encoder)}

# Monarch Mixer BERT (jaxbert/models/m2.py): attention-free encoders, M2-BERT-base 80M / 110M, the LoCo 32k shape.
from jaxbert.models.m2 import model as _m2  # noqa: E402

for _name in _m2.PRESETS:
    register(_name, lambda _n=_name: _m2.preset(_n), _m2.M2Model)

# Llama-family decoders (jaxbert/models/llm.py; presets in llm.PRESETS, not in _PRESETS: they have no
# BERT task heads, so the golden-shape table of encoder tasks does not apply to them).
from jaxbert.models.llm.model import LlmConfig as _LlmConfig, LlmModel as _LlmModel  # noqa: E402
BACKBONES_BY_MODEL_TYPE.update({"llama": (_LlmConfig, _LlmModel), "qwen2": (_LlmConfig, _LlmModel)})
