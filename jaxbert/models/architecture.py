""":class:`ArchitectureSpec`: everything jaxbert knows about one architecture (see :mod:`jaxbert.models.registry`).

Family folders build their specs from this module (``jaxbert/models/<family>/spec.py``); the
registry collects them. Kept apart from the registry so that a family's spec can be imported on
its own without a circular import.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from jaxbert.convert.rules import KeyTable

KINDS = ("encoder", "decoder")


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """Everything about one architecture (one HF ``model_type``).

    Identity and modules:

    * ``model_type``: the ``config.model_type`` of its configs and the HF ``config.json`` value.
    * ``kind``: ``"encoder"`` (bidirectional, BERT-style task heads, :class:`SentenceEncoder`) or
      ``"decoder"`` (a causal LM used as is or made bidirectional, :class:`LlmSentenceEncoder`).
    * ``config_cls``: the config dataclass; ``backbone``: the Linen module class, built as
      ``backbone(config)``.
    * ``presets``: preset name -> zero-argument config factory (looked up by :func:`get`).
    * ``has_pooler``: the HF backbone has BERT's ``pooler.dense`` (tanh on [CLS]); an MLM export
      (which never trains it) adds a fresh one so that classification loads find every key.

    Hugging Face format (all None / empty for architectures jaxbert has no HF layout for):

    * ``from_hf_dict(hf_config, **overrides) -> config`` and ``to_hf_dict(config) -> dict``.
    * ``keys``: the :class:`~jaxbert.convert.rules.KeyTable` (backbone and head rules).
    * ``hf_architectures``: task -> transformers class name written to ``config.json``
      (``{"base": "BertModel", "sequence_classification": "BertForSequenceClassification", ...}``).
    * ``prepare_state(state, config) -> (state, notes)``: checks / adapts a checkpoint's tensors
      before the key table runs (notes go to ``LoadReport.adapted``).
    * ``export_extras(state, config) -> dict``: tensors that are not parameters (buffers, tied
      copies) added to an exported state dict.
    * ``claims_hf_config(hf_config) -> bool``: for configs whose ``model_type`` names another
      architecture (the M2 reference writes ``"bert"`` plus ``monarch_mixer_sequence_mixing``).
    * ``accepts_file(path) -> bool`` / ``read_file(path) -> (hf_config, state)``: a single-file
      checkpoint format the architecture reads (LLMs: GGUF), with the config derived from it.
    """

    model_type: str
    kind: str
    config_cls: type
    backbone: type
    presets: Mapping[str, Callable[[], Any]] = dataclasses.field(default_factory=dict)
    has_pooler: bool = False
    from_hf_dict: Callable[..., Any] | None = None
    to_hf_dict: Callable[[Any], dict] | None = None
    keys: KeyTable | None = None
    hf_architectures: Mapping[str, str] = dataclasses.field(default_factory=dict)
    prepare_state: Callable[[dict, Any], tuple[dict, list[str]]] | None = None
    export_extras: Callable[[dict, Any], dict] | None = None
    claims_hf_config: Callable[[dict], bool] | None = None
    accepts_file: Callable[[Path], bool] | None = None
    read_file: Callable[[Path], tuple[dict, dict]] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ArchitectureSpec {self.model_type!r}: kind={self.kind!r}, expected one of {KINDS}")
        hf_parts = {"from_hf_dict": self.from_hf_dict, "to_hf_dict": self.to_hf_dict, "keys": self.keys}
        given = [k for k, v in hf_parts.items() if v is not None]
        if given and len(given) != len(hf_parts):
            raise ValueError(f"ArchitectureSpec {self.model_type!r}: a Hugging Face format needs "
                             f"{sorted(hf_parts)}; missing {sorted(set(hf_parts) - set(given))}")
        if (self.accepts_file is None) != (self.read_file is None):
            raise ValueError(f"ArchitectureSpec {self.model_type!r}: accepts_file and read_file come together")

    @property
    def has_hf_format(self) -> bool:
        """True when the architecture converts to/from Hugging Face checkpoints."""
        return self.keys is not None

    def _require_hf(self) -> None:
        if not self.has_hf_format:
            raise ValueError(f"model_type={self.model_type!r} has no Hugging Face format in jaxbert "
                             "(its ArchitectureSpec has no from_hf_dict / to_hf_dict / keys); "
                             "jaxbert.models.registry.specs() lists the convertible ones")

    def config_from_hf(self, hf_config: dict, **overrides: Any) -> Any:
        """``config.json`` dict -> config of this architecture (``overrides`` replace fields)."""
        self._require_hf()
        return self.from_hf_dict(hf_config, **overrides)

    def config_to_hf(self, config: Any) -> dict:
        """Config -> ``config.json`` dict."""
        self._require_hf()
        return self.to_hf_dict(config)

    def key_table(self) -> KeyTable:
        """The key table; ValueError naming the model type when the architecture has no HF format."""
        self._require_hf()
        return self.keys

    def hf_architecture(self, task: str) -> str:
        """The transformers class name of ``task``; ValueError listing the exportable tasks."""
        self._require_hf()
        if task not in self.hf_architectures:
            raise ValueError(f"exporting task {task!r} is not supported for model_type={self.model_type!r} "
                             f"(supported: {sorted(self.hf_architectures)})")
        return self.hf_architectures[task]
