"""Defaults shared by every experiment config. Configs call ``base_config(task)`` and override.

Every engine key a run can take exists here; each task adds its own keys
(``jaxbert.tasks.base.Task.config_section``: ``qa.*``, ``multilabel.*``, ``mlm.*``,
``data.tokens_field``, ...) through ``base_config(task)``, so a config never carries keys of
another task and ``--config.some_key=...`` for a key that does not exist in the run's config
is an error (the launcher suggests the nearest valid keys).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxbert.train.mesh import DEFAULT_RULES
from jaxbert.train.optim import default_optim_config
from jaxbert.peft import default_config as default_peft_config


def base_config(task: str = "classification") -> ml_collections.ConfigDict:
    """Engine keys + the keys of ``task`` only (a key of another task is unknown: the launcher rejects it)."""
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.init_from = config_dict.placeholder(str)  # HF dir or "asset:minilm"; None = random init
    c.model.preset = "bert-tiny"  # registry preset used for random init
    # Model config fields to replace (None = keep the checkpoint's / preset's value).
    c.model.overrides = ml_collections.ConfigDict()
    c.model.overrides.dtype = config_dict.placeholder(str)  # compute dtype: "float32" | "bfloat16"
    c.model.overrides.param_dtype = config_dict.placeholder(str)
    c.model.overrides.hidden_dropout_prob = config_dict.placeholder(float)
    c.model.overrides.attention_probs_dropout_prob = config_dict.placeholder(float)
    c.model.overrides.attention_implementation = config_dict.placeholder(str)
    c.model.overrides.remat = config_dict.placeholder(bool)

    c.data = ml_collections.ConfigDict()
    c.data.train = config_dict.placeholder(str)
    c.data.validation = config_dict.placeholder(str)
    c.data.test = config_dict.placeholder(str)
    c.data.tokenizer = config_dict.placeholder(str)  # HF dir or "asset:NAME"; default: model.init_from
    c.data.text_field = "text"
    c.data.pair_field = config_dict.placeholder(str)
    c.data.label_field = "label"
    c.data.labels = config_dict.placeholder(tuple)  # None: sorted distinct values of train
    c.data.max_length = 128
    c.data.buckets = config_dict.placeholder(tuple)
    c.eval_splits = ("validation", "test")

    c.batch_size = 32  # global
    c.eval_batch_size = 128
    c.grad_accum_steps = 1
    c.num_epochs = 1.0
    c.num_train_steps = config_dict.placeholder(int)  # overrides num_epochs
    c.reinit_top_layers = 0

    c.optim = default_optim_config()

    # Parameter-efficient / half fine-tuning (jaxbert/peft): method 'none' = full fine-tuning;
    # each method's options in its own section (peft.lora, peft.adapter, ..., peft.hft).
    c.peft = default_peft_config()

    # Parallelism: change these, never the model.
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.logical_axis_rules = DEFAULT_RULES

    c.log_every = 50
    c.eval_every = 0  # 0: evaluate only at the end
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 0  # 0: only at evaluations, preemption and the end
    c.checkpoint.keep_last = 2
    c.checkpoint.keep_best = 1
    c.checkpoint.best_metric = "validation/accuracy"
    c.checkpoint.best_mode = "max"
    # A latest checkpoint whose files fail their checksums (or cannot be read) is moved aside to
    # <step>.corrupt-<reason> and the previous one resumed; False: stop with an error naming the file.
    c.checkpoint.fallback = True
    c.export_hf = True
    c.tensorboard = True
    c.progress = True
    c.debug_sigterm_at_step = config_dict.placeholder(int)  # tests only: SIGTERM self at this step
    # A resume whose config changes the optimisation trajectory (jaxbert.train.run_config) is refused
    # unless this is True; the change is then recorded in metrics.jsonl.
    c.allow_config_change = False
    add_task_section(c, task)
    return c


def add_task_section(c: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
    """Add the keys of ``task`` (its class's ``config_section()``, e.g. ``qa.*``, ``mlm.*``,
    ``data.tokens_field``) to ``c`` and set ``c.task``; a key already in ``c`` is an error."""
    from jaxbert.tasks import get_task

    def merge(dst: ml_collections.ConfigDict, src: ml_collections.ConfigDict, where: str) -> None:
        for k in src.keys():
            v = src._fields[k]  # placeholders stay placeholders (typed None)
            if isinstance(v, ml_collections.ConfigDict) and k in dst and isinstance(dst[k], ml_collections.ConfigDict):
                merge(dst[k], v, f"{where}{k}.")
            elif k in dst:
                raise ValueError(f"task {task!r} section redefines config key {where}{k}")
            else:
                dst[k] = v

    merge(c, get_task(task).config_section(), "")
    c.task = task
    return c
