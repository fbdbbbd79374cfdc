"""Parameter-efficient and half fine-tuning as functions on param pytrees + optax labels.

One method per file; all share the :class:`~jaxbert.peft.base.PeftMethod` interface:

==============  ==================  ===============================================================
method          file                what trains / what is added
==============  ==================  ===============================================================
``lora``        ``lora.py``         ``W + scale * A @ B`` on regex-targeted kernels (A, B + head)
``houlsby``     ``adapters.py``     bottleneck adapters after attention and after the FFN
``pfeiffer``    ``adapters.py``     one bottleneck adapter after the FFN
``prefix``      ``prefix.py``       per-layer virtual keys/values (optional reparameterisation MLP)
``prompt``      ``prompt.py``       soft-prompt embeddings (init from vocab or a text)
``bitfit``      ``bitfit.py``       biases only (+ head)
``lightweight`` ``lightweight.py``  token embeddings + head, or last layer (+ pooler) + head
``dsee``        ``dsee.py``         LoRA + fixed-support sparse update (+ magnitude pruning)
``hft``         ``hft.py``          half of each layer's matrices per stage (optimizer mask)
==============  ==================  ===============================================================

Selected by ``config.peft.method`` (``'none'`` = full fine-tuning) with each method's options in
``config.peft.<section>`` (:func:`default_config`). :func:`build` turns the section into a method;
:func:`attach` wraps a task model and its pretrained params. Adapter-only checkpoints:
:mod:`jaxbert.peft.checkpoint`. Forgetting measurement: :mod:`jaxbert.peft.forgetting`.

Default learning rates (``METHODS[name].default_learning_rate``, used by
``experiments/configs/peft.py``; AdamW, MiniLM-sized encoders, few epochs): full fine-tuning and
HFT 1e-4; LoRA, DSEE, adapters and BitFit 1e-3 (few, freshly initialised or small parameters
need larger steps); lightweight 5e-4; prefix tuning 1e-2 and prompt tuning 3e-2 (the usual
ranges for virtual-token methods with AdamW).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections
from ml_collections import config_dict

from jaxbert.peft.adapters import Houlsby, Pfeiffer
from jaxbert.peft.base import (DEFAULT_HEAD_REGEX, FROZEN, TRAINABLE, Attached, PeftError, PeftMethod, PeftModel,
                               flatten, unflatten)
from jaxbert.peft.bitfit import BitFit
from jaxbert.peft.dsee import DSEE
from jaxbert.peft.hft import HFT
from jaxbert.peft.lightweight import Lightweight
from jaxbert.peft.lora import LoRA
from jaxbert.peft.prefix import PrefixTuning
from jaxbert.peft.prompt import PromptTuning

METHODS: dict[str, type[PeftMethod]] = {m.name: m for m in (LoRA, Houlsby, Pfeiffer, PrefixTuning, PromptTuning,
                                                            BitFit, Lightweight, DSEE, HFT)}
#: Full fine-tuning (no PEFT).
NONE = "none"


def default_config() -> ml_collections.ConfigDict:
    """The ``config.peft`` section: ``method`` ('none' = full fine-tuning) and every method's options."""
    c = ml_collections.ConfigDict()
    c.method = NONE
    c.head_regex = DEFAULT_HEAD_REGEX  # always trained (a fresh task head must learn)
    for cls in METHODS.values():
        if cls.section in c:
            continue
        sec = ml_collections.ConfigDict()
        for k, v in cls.DEFAULTS.items():
            if v is None:
                sec[k] = config_dict.placeholder(tuple if k.endswith("_ids") else str)
            else:
                sec[k] = v
        c[cls.section] = sec
    return c


def _options(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    d = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


def build(peft_config: Any, model_config: Any, tokenizer: Any = None) -> PeftMethod | None:
    """The method named by ``peft_config.method`` with its section's options (None for 'none').

    ``tokenizer`` resolves ``prompt.init_text``. Unknown methods / options raise :class:`PeftError`.
    """
    if peft_config is None:
        return None
    method = peft_config.get("method", NONE) if hasattr(peft_config, "get") else getattr(peft_config, "method")
    if method in (None, NONE, "full"):
        return None
    if method not in METHODS:
        raise PeftError(f"unknown peft.method {method!r}; known: {[NONE] + sorted(METHODS)}")
    cls = METHODS[method]
    opts = _options(peft_config.get(cls.section))
    head = peft_config.get("head_regex", DEFAULT_HEAD_REGEX)
    if cls is PromptTuning and opts.get("init_from") == "text" and opts.get("init_text") and not opts.get("init_token_ids"):
        if tokenizer is None:
            raise PeftError("peft.prompt.init_from='text' needs a tokenizer to tokenise init_text")
        ids = tokenizer(opts["init_text"], add_special_tokens=False)["input_ids"]
        if not ids:
            raise PeftError(f"peft.prompt.init_text={opts['init_text']!r} tokenises to nothing")
        opts["init_token_ids"] = tuple(int(i) for i in ids)
    return cls(model_config, head_regex=head, **opts)


def build_from_dict(saved: Mapping[str, Any], model_config: Any) -> PeftMethod:
    """Rebuild a method from :meth:`PeftMethod.to_config` output (adapter checkpoints)."""
    name = saved.get("method")
    if name not in METHODS:
        raise PeftError(f"adapter config names unknown method {name!r}; known: {sorted(METHODS)}")
    opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(saved.get("options", {})).items()}
    return METHODS[name](model_config, head_regex=saved.get("head_regex", DEFAULT_HEAD_REGEX), **opts)


def attach(model: Any, method: PeftMethod | None, pretrained_params: Any, sample_input: Mapping[str, Any],
           seed: int = 0) -> Attached | None:
    """Wrap ``model`` with ``method`` and extend ``pretrained_params`` (None: random init later).

    Returns None when ``method`` is None (full fine-tuning).
    """
    if method is None:
        return None
    pm = PeftModel(model, method)
    params = None
    if pretrained_params is not None:
        rng = jax.random.fold_in(jax.random.key(seed), 0x9EF7)
        params = pm.init_from_base(pretrained_params, rng, sample_input)
    return Attached(model=pm, params=params)


__all__ = ["METHODS", "NONE", "FROZEN", "TRAINABLE", "PeftError", "PeftMethod", "PeftModel", "Attached",
           "default_config", "build", "build_from_dict", "attach", "flatten", "unflatten",
           "LoRA", "Houlsby", "Pfeiffer", "PrefixTuning", "PromptTuning", "BitFit", "Lightweight", "DSEE", "HFT"]
