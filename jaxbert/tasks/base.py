"""The task contract of the training loop, declared once: :class:`TaskProtocol` (what the Trainer
calls), :class:`Task` (a base class with the shared parts), and the task registry.

What every task shares lives here, so a task file holds only what is specific to it:

* **loading** (:meth:`Task.load_model`): ``model.init_from`` (an HF directory or
  ``"asset:NAME"``, :func:`resolve_model_path`) through :func:`jaxbert.convert.hf.load_pretrained`,
  or a random init of ``model.preset`` through :func:`jaxbert.models.registry.get` +
  :func:`jaxbert.models.task_models.build_task_model`; LLM decoders through
  :func:`jaxbert.models.llm.hf.load_llm` / :func:`jaxbert.models.registry.get`. ``model.overrides``
  (None values dropped) replace config fields. :meth:`Task.load_task_tokenizer` loads the
  tokenizer (``data.tokenizer`` or the model directory) and checks it against the vocabulary.
* **PEFT** (:meth:`Task.attach_peft`): every task honours ``config.peft`` or refuses the method
  with a :class:`~jaxbert.peft.PeftError` naming the task and the method
  (:meth:`Task.check_peft`). Generic rules: a method that inserts modules (adapters, prefixes,
  soft prompts) needs a model config with extension sites; a soft prompt lengthens the sequence,
  so tasks with per-token outputs (``token_outputs = True``) refuse it. Tasks add their own rules
  by overriding :meth:`Task.check_peft`.
* **export** (:meth:`Task.export`): host params, PEFT folded in (:meth:`Task.merged_params`), a task
  transform (:meth:`Task.prepare_export_params`), then :meth:`Task.write_export` (default: an HF
  directory via :func:`jaxbert.convert.hf.save_pretrained` for :attr:`Task.hf_task` + the tokenizer).
* **eval hooks**: :meth:`Task.eval_metrics` turns the concatenated ``predict_fn`` outputs and summed
  statistics of one split into metrics; :meth:`Task.extra_state` / :meth:`Task.load_extra_state`
  carry task settings through checkpoints.
* **config** (:meth:`Task.config_section`): the keys only this task reads (same dotted names as
  before), added to the run config by ``experiments/configs/common.base_config(task)``.

Registry: ``@register("name")`` on a :class:`Task` subclass; :func:`get_task` returns the class
(the built-in task modules, :data:`BUILTIN_MODULES`, are imported on first use).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np

PyTree = Any

#: Modules holding the built-in tasks (each registers its class with :func:`register` on import).
BUILTIN_MODULES = ("jaxbert.tasks.classification", "jaxbert.tasks.mlm", "jaxbert.tasks.token_classification",
                   "jaxbert.tasks.question_answering", "jaxbert.tasks.multilabel", "jaxbert.tasks.regression",
                   "jaxbert.tasks.contrastive", "jaxbert.tasks.llm_embedding")

_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make the task class available to :func:`get_task` as ``name``."""
    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"task {name!r} is registered twice ({_REGISTRY[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get_task(name: str) -> type:
    """The task class registered as ``name`` (ValueError listing the known names)."""
    if name not in _REGISTRY:
        _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def task_names() -> list[str]:
    """Names of every registered task."""
    _load_builtins()
    return sorted(_REGISTRY)


@runtime_checkable
class TaskProtocol(Protocol):
    """What :class:`jaxbert.train.loop.Trainer` uses of a task (:class:`Task` implements it)."""

    name: str
    model: Any  # Linen module or PeftModel: init(rng, **sample_input), apply(variables, ...)
    sample_input: Mapping[str, np.ndarray]
    pretrained_params: PyTree | None
    peft: Any  # PeftModel or None
    train_source: Any  # len() = training examples per epoch
    eval_sources: Mapping[str, Any]

    def train_iterator(self, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]: ...

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]: ...

    def loss_fn(self, params: PyTree, batch: dict, rng: jax.Array, deterministic: bool = False
                ) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def predict_fn(self, params: PyTree, batch: dict) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]: ...

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]: ...

    def check_records(self) -> None: ...

    def eval_metric_names(self) -> dict[str, frozenset[str]]: ...

    def known_splits(self) -> frozenset[str]: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, extra: dict[str, Any]) -> None: ...

    def export(self, params: PyTree, path: str | os.PathLike) -> Path: ...


def _describe_text(src: Any, i: int) -> str:
    """``text i`` of an eval set, with its query / document id when the set has them."""
    qids, dids = getattr(src, "query_ids", None), getattr(src, "doc_ids", None)
    if qids is not None and dids is not None:
        return f"query {qids[i]!r}" if i < len(qids) else f"document {dids[i - len(qids)]!r}"
    return f"text {i}"


def resolve_model_path(init_from: str) -> Path:
    """``"asset:NAME"`` -> the cached asset path (fetched on first use); anything else is a path."""
    if init_from.startswith("asset:"):
        from jaxbert import assets
        return Path(assets.fetch(init_from.split(":", 1)[1]))
    path = Path(os.path.expanduser(init_from))
    if not path.exists():
        raise FileNotFoundError(f"model.init_from={init_from!r}: directory {path} does not exist")
    return path


def model_overrides(config: Any) -> dict[str, Any]:
    """``model.overrides`` without its None values (None = keep the checkpoint's / preset's)."""
    return {k: v for k, v in dict(config.model.overrides or {}).items() if v is not None}


@dataclasses.dataclass
class Loaded:
    """What :meth:`Task.load_model` returns.

    ``model`` is the task model (None for ``hf_task`` ``"base"``/``"mlm"`` from a preset, where the
    task builds its own wrapper around ``backbone``), ``config`` the model config, ``backbone`` the
    backbone class, ``params`` the pretrained params (None: random init), ``model_dir`` the
    checkpoint (None for a preset), ``hf_config`` the checkpoint's config dict (None for a preset).
    """

    model: Any
    config: Any
    backbone: Any
    params: PyTree | None
    model_dir: Path | None
    hf_config: dict | None = None


class Task:
    """Base class of the training loop's tasks (see the module docstring).

    A subclass sets, in ``__init__``: ``config``, ``model``, ``model_config``, ``tokenizer``,
    ``sample_input``, ``pretrained_params``, ``train_source``, ``eval_sources``; then calls
    :meth:`attach_peft`. It implements ``train_iterator``, ``eval_batches``, ``loss_fn``,
    ``predict_fn`` and ``eval_metrics``.
    """

    name: ClassVar[str] = ""
    #: ``load_pretrained`` / ``save_pretrained`` task name of the model (None: the task writes its own export).
    hf_task: ClassVar[str | None] = None
    #: True when outputs are per input token (spans, tags, masked tokens): soft prompts are refused.
    token_outputs: ClassVar[bool] = False

    peft: Any = None
    pretrained_params: PyTree | None = None
    model_dir: Path | None = None

    # ------------------------------------------------------------------ config
    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        """Keys only this task reads, as a ConfigDict merged into the base config (same dotted names).

        E.g. ``{"qa": {...}}`` or ``{"data": {"tokens_field": ...}}``; empty by default.
        """
        return ml_collections.ConfigDict()

    @classmethod
    def config_rules(cls) -> tuple:
        """Allowed ranges of this task's numeric section keys
        (:class:`jaxbert.config_rules.Rule`; checked with the engine's by ``check_config``)."""
        return ()

    # ------------------------------------------------------------------ loading
    def load_model(self, config: Any, hf_task: str, num_labels: int | None = None, *,
                   model_dir: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Loaded:
        """The model of ``config.model`` for ``hf_task``: the one place a task loads weights.

        ``hf_task``: a :data:`jaxbert.convert.hf.TASKS` name, or ``"llm"`` (a Llama / Qwen2
        decoder, :mod:`jaxbert.models.llm`). ``model_dir`` replaces the resolved ``model.init_from``
        (e.g. the transformer folder of a sentence-transformers directory); ``overrides`` add to /
        replace ``model.overrides``.
        """
        ov = {**model_overrides(config), **dict(overrides or {})}
        if hf_task == "llm":
            return self._load_llm(config, model_dir, ov)
        from jaxbert.models import build_task_model, registry

        if config.model.init_from:
            path = model_dir if model_dir is not None else resolve_model_path(config.model.init_from)
            return self.load_checkpoint(path, hf_task, num_labels, seed=config.seed, **ov)
        cfg, backbone = registry.get(config.model.preset, **ov)
        if hf_task in ("base", "mlm"):
            return Loaded(None, cfg, backbone, None, None)
        model = build_task_model(cfg, backbone, hf_task, num_labels)
        return Loaded(model, model.config, backbone, None, None)

    @staticmethod
    def load_checkpoint(path: str | os.PathLike, hf_task: str, num_labels: int | None = None, *, seed: int = 0,
                        **overrides: Any) -> Loaded:
        """An HF directory as the model for ``hf_task`` (also the teachers of B-PROP and DSE)."""
        from jaxbert.convert import hf as hf_convert
        from jaxbert.models import registry
        path = Path(path)
        pre = hf_convert.load_pretrained(path, task=hf_task, num_labels=num_labels, seed=seed, **overrides)
        backbone = registry.spec_of(pre.config).backbone
        return Loaded(pre.model, pre.config, backbone, pre.params, path, pre.hf_config)

    @staticmethod
    def _load_llm(config: Any, model_dir: Path | None, overrides: dict[str, Any]) -> Loaded:
        from jaxbert.models import registry
        from jaxbert.models.llm import model as llm_lib
        from jaxbert.models.llm.hf import load_llm

        if config.model.init_from:
            path = model_dir if model_dir is not None else resolve_model_path(config.model.init_from)
            pre = load_llm(path, **overrides)
            return Loaded(llm_lib.LlmModel(pre.config), pre.config, llm_lib.LlmModel, pre.params, path, pre.hf_config)
        if config.model.preset not in registry.names(kind="decoder"):
            raise ValueError(f"model.preset={config.model.preset!r} is not an LLM preset; "
                             f"known: {registry.names(kind='decoder')}")
        cfg, _ = registry.get(config.model.preset, **overrides)
        return Loaded(llm_lib.LlmModel(cfg), cfg, llm_lib.LlmModel, None, None)

    def load_task_tokenizer(self, config: Any, model_dir: Path | None, vocab_size: int | None = None) -> Any:
        """``data.tokenizer`` (a directory or ``"asset:NAME"``), else the model directory's tokenizer.

        A directory without tokenizer files is an error naming the files expected. With
        ``vocab_size``, every tokenizer id must fit the embedding table, and with pretrained
        weights (``model_dir``) the tokenizer must not be much smaller than it either
        (:func:`jaxbert.data.tokenization.check_vocab`, the check the sentence encoders use too).
        """
        from jaxbert.data.tokenization import check_vocab, load_tokenizer

        tok = config.data.get("tokenizer")
        if tok:
            source = resolve_model_path(tok)
        elif model_dir is not None:
            source = model_dir
        else:
            raise ValueError(f"data.tokenizer is required when model.init_from is None (task {self.name!r})")
        tokenizer = load_tokenizer(source)
        if vocab_size is not None:
            check_vocab(tokenizer, vocab_size, pretrained=model_dir is not None, source=source)
        return tokenizer

    def load_model_and_tokenizer(self, config: Any, hf_task: str, num_labels: int | None = None) -> None:
        """:meth:`load_model` + :meth:`load_task_tokenizer`; sets ``model``, ``model_config``,
        ``pretrained_params``, ``tokenizer``, ``model_dir``, ``backbone``."""
        loaded = self.load_model(config, hf_task, num_labels)
        self.model, self.model_config, self.pretrained_params = loaded.model, loaded.config, loaded.params
        self.backbone, self.model_dir = loaded.backbone, loaded.model_dir
        self.tokenizer = self.load_task_tokenizer(config, loaded.model_dir, loaded.config.vocab_size)

    # ------------------------------------------------------------------ PEFT
    def check_peft(self, method: Any) -> None:
        """Raise :class:`~jaxbert.peft.PeftError` if this task cannot train with ``method``."""
        from jaxbert.peft import PeftError

        exts = tuple(method.extensions())
        if not exts:
            return
        cfg = self.model_config
        fields = {f.name for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else set()
        if "extensions" not in fields:
            raise PeftError(f"task {self.name!r}: peft.method={method.name!r} inserts modules at the encoder's "
                            f"extension sites, but {type(cfg).__name__} has none; use a method that only changes "
                            "weights (lora, bitfit, lightweight, dsee, hft)")
        try:  # the architecture's own checks (e.g. M2 has no attention keys for a prefix)
            dataclasses.replace(cfg, extensions=tuple(cfg.extensions) + exts)
        except (ValueError, TypeError) as e:
            raise PeftError(f"task {self.name!r}: peft.method={method.name!r} does not fit "
                            f"{type(cfg).__name__}: {e}") from None
        if self.token_outputs and any(e.site == "embeddings" for e in exts):
            raise PeftError(f"task {self.name!r}: peft.method={method.name!r} inserts soft-prompt tokens into the "
                            "sequence, which would shift this task's per-token outputs (tags, answer spans, masked "
                            "positions); use lora, an adapter, prefix, bitfit, lightweight, dsee or hft")

    def attach_peft(self, config: Any, sample_input: Mapping[str, Any] | None = None) -> None:
        """Apply ``config.peft`` (method 'none': nothing): wrap ``self.model``, extend ``pretrained_params``.

        Sets ``self.peft`` (the :class:`~jaxbert.peft.PeftModel`, or None). Call after ``model``,
        ``model_config``, ``tokenizer``, ``pretrained_params`` and ``sample_input`` are set.
        """
        from jaxbert import peft as peft_lib

        method = peft_lib.build(config.get("peft"), self.model_config, getattr(self, "tokenizer", None))
        if method is None:
            self.peft = None
            return
        self.check_peft(method)
        attached = peft_lib.attach(self.model, method, self.pretrained_params,
                                   self.sample_input if sample_input is None else sample_input, seed=config.seed)
        self.peft = attached.model
        self.model, self.pretrained_params = attached.model, attached.params

    @property
    def base_model(self) -> Any:
        """The task model without the PEFT method (``self.model`` when PEFT is off)."""
        return self.model if self.peft is None else self.peft.base_model

    # ------------------------------------------------------------------ validation hooks
    def check_records(self) -> None:
        """Check every split's records before step 1 (the Trainer calls this right after building the task).

        Raise ``ValueError``/``TypeError`` naming the record (file and line where known). Tasks that build
        features in ``__init__`` have checked their records there; this default checks the eval sets
        that hold raw texts (``texts``, e.g. retrieval / similarity sets): every text is a str.
        """
        for split, src in dict(getattr(self, "eval_sources", None) or {}).items():
            texts = getattr(src, "texts", None)
            if texts is None:
                continue
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"eval set {split!r}: {_describe_text(src, i)} must be a str, "
                                    f"got {type(text).__name__}: {text!r:.80}")

    def metric_names(self, split: str) -> frozenset[str]:
        """Names of the metrics :meth:`eval_metrics` returns for ``split`` (what ``checkpoint.best_metric``
        may name after ``<split>/``)."""
        raise NotImplementedError(f"task {self.name!r} declares no metric_names")

    def known_splits(self) -> frozenset[str]:
        """Every split name this task's config could evaluate: ``eval_splits`` and ``data.validation`` /
        ``data.test`` (a ``best_metric`` naming one without data in this run is not a typo)."""
        config = getattr(self, "config", None)
        return frozenset(tuple((config.get("eval_splits") if config is not None else None) or ())
                         + ("validation", "test"))

    def eval_metric_names(self) -> dict[str, frozenset[str]]:
        """``{split: metric names}`` of every split this run evaluates (``eval_sources``)."""
        return {split: frozenset(self.metric_names(split)) for split in dict(self.eval_sources)}

    # ------------------------------------------------------------------ eval hooks / state
    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        """Metrics of one split from the concatenated ``predict_fn`` outputs and summed statistics."""
        raise NotImplementedError(f"task {self.name!r} defines no eval_metrics")

    def extra_state(self) -> dict[str, Any]:
        """Task settings saved with every checkpoint (JSON-serialisable)."""
        return {}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Take back what :meth:`extra_state` saved (called when a run resumes); checks may raise."""

    # ------------------------------------------------------------------ export
    def merged_params(self, params: PyTree) -> PyTree:
        """Plain params of the base model on the host (the PEFT update folded in; PeftError if impossible)."""
        from flax import linen as nn
        params = nn.unbox(jax.device_get(params))
        return self.peft.merge(params) if self.peft is not None else params

    def prepare_export_params(self, params: PyTree) -> PyTree:
        """Task transform of merged host params before writing (default: unchanged)."""
        return params

    def export_id2label(self) -> dict[int, str] | None:
        """``id2label`` written into the export's ``config.json`` (None: none)."""
        label_map = getattr(self, "label_map", None)
        return None if label_map is None else {i: str(label) for i, label in enumerate(label_map.labels)}

    def export_extra_config(self) -> dict[str, Any] | None:
        """Extra ``config.json`` entries of the export (None: none)."""
        return None

    def write_export(self, params: PyTree, path: str | os.PathLike) -> Path:
        """Write ``params`` (merged, prepared) to ``path``: HF directory for :attr:`hf_task` + tokenizer."""
        from jaxbert.convert import hf as hf_convert
        if self.hf_task is None:
            raise NotImplementedError(f"task {self.name!r} has no hf_task; it must define write_export")
        kw = {}
        extra = self.export_extra_config()
        if extra:
            kw["extra_config"] = extra
        # The tokenizer goes inside the same atomic swap as the weights and config.
        return hf_convert.save_pretrained(path, params, self.model_config, task=self.hf_task,
                                          id2label=self.export_id2label(), tokenizer=self.tokenizer, **kw)

    def export(self, params: PyTree, path: str | os.PathLike) -> Path:
        """The trained model as a directory others load: merge PEFT, prepare, write (one path for every task)."""
        return self.write_export(self.prepare_export_params(self.merged_params(params)), path)
