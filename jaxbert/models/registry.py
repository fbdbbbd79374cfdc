"""The architecture registry: one :class:`ArchitectureSpec` per ``model_type``, and the named presets.

Everything jaxbert knows about an architecture is in its spec: the config class, the backbone
module, whether it is an encoder or a decoder, its presets, and (when it has one) its Hugging
Face format: how ``config.json`` becomes a config and back, the regex key table, the HF class
name per task, and the hooks that adapt a checkpoint on load or add tensors on export. Loading
(:func:`jaxbert.convert.hf.load_pretrained`), export, presets, task models and the inference
loader all read the spec; none of them branches on a model-type string.

Each architecture family is one folder ``jaxbert/models/<family>/`` whose ``spec.py`` defines
``SPECS`` (a list of specs, usually one). The registry imports the folders named in
:data:`FAMILIES`; adding an architecture is one folder plus one entry there::

    from jaxbert.models import registry
    cfg, backbone = registry.get("bert-base", hidden_dropout_prob=0.0)   # a preset
    spec = registry.spec("modernbert")                                   # by HF model_type
    spec = registry.spec_of(cfg)                                         # by a config's model_type
    spec = registry.spec_for_hf_config(json.load(open("config.json")))   # by a config.json dict
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Callable

from jaxbert.models.architecture import KINDS, ArchitectureSpec

# The architecture families, each a folder jaxbert/models/<family>/ with a spec.py defining SPECS.
FAMILIES = ("bert", "modernbert", "m2", "llm", "distilbert")


_SPECS: dict[str, ArchitectureSpec] = {}
# preset name -> (config factory, backbone class): the lookup index of every spec's presets.
_PRESETS: dict[str, tuple[Callable[[], Any], Any]] = {}


def register(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Add ``spec`` (and its presets). A second spec for one model_type or a preset name used twice is an error."""
    if spec.model_type in _SPECS:
        raise ValueError(f"model_type {spec.model_type!r} is already registered")
    clash = sorted(set(spec.presets) & set(_PRESETS))
    if clash:
        raise ValueError(f"presets {clash} of {spec.model_type!r} are already registered")
    _SPECS[spec.model_type] = spec
    for name, factory in spec.presets.items():
        _PRESETS[name] = (factory, spec.backbone)
    return spec


def _unknown(what: str, name: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(str(name), known, n=3)
    return f"unknown {what} {name!r}" + (f"; did you mean {close}?" if close else "") + f" Registered: {known}"


def specs() -> dict[str, ArchitectureSpec]:
    """model_type -> spec, for every registered architecture (a copy)."""
    return dict(_SPECS)


def spec(model_type: str) -> ArchitectureSpec:
    """The spec of ``model_type``; KeyError listing the registered model types."""
    if model_type not in _SPECS:
        raise KeyError(_unknown("model_type", model_type, sorted(_SPECS)))
    return _SPECS[model_type]


def spec_of(config: Any) -> ArchitectureSpec:
    """The spec of a config object (by its ``model_type``)."""
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise TypeError(f"{type(config).__name__} has no model_type; not a registered architecture's config")
    return spec(model_type)


def spec_for_hf_config(hf_config: dict, source: Any = "") -> ArchitectureSpec:
    """The spec that reads an HF ``config.json`` dict (``source`` names it in errors).

    Specs whose ``claims_hf_config`` accepts the dict win over the plain ``model_type`` lookup.
    """
    for s in _SPECS.values():
        if s.claims_hf_config is not None and s.claims_hf_config(hf_config):
            return s
    model_type = hf_config.get("model_type")
    convertible = sorted(m for m, s in _SPECS.items() if s.has_hf_format)
    if model_type not in convertible:
        where = f"{source}/config.json" if source else "the config"
        raise ValueError(f"{where} has model_type={model_type!r}; jaxbert converts {convertible}")
    return _SPECS[model_type]


def spec_for_file(path: str | Path) -> ArchitectureSpec | None:
    """A spec whose single-file format accepts ``path`` (e.g. a ``.gguf`` file), or None."""
    for s in _SPECS.values():
        if s.accepts_file is not None and s.accepts_file(Path(path)):
            return s
    return None


def names(kind: str | None = None) -> list[str]:
    """Sorted preset names; ``kind="encoder"`` / ``"decoder"`` keeps those of that kind only."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r}, expected one of {KINDS}")
    return sorted(n for s in _SPECS.values() if kind in (None, s.kind) for n in s.presets)


def get(name: str, **overrides: Any) -> tuple[Any, Any]:
    """Return ``(config, backbone_class)`` for preset ``name``; ``overrides`` replace config fields."""
    if name not in _PRESETS:
        raise KeyError(_unknown("model preset", name, sorted(_PRESETS)))
    config_fn, backbone = _PRESETS[name]
    cfg = config_fn()
    return (cfg.replace(**overrides) if overrides else cfg), backbone


for _family in FAMILIES:
    for _spec in importlib.import_module(f"jaxbert.models.{_family}.spec").SPECS:
        register(_spec)
