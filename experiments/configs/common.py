"""Defaults shared by every experiment config. Configs call ``base_config()`` and override.

Every key a run can take exists here, so ``--config.some_key=...`` for a key that does not
exist is an error (the launcher suggests the nearest valid keys).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxbert.train.mesh import DEFAULT_RULES
from jaxbert.train.optim import default_optim_config


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "classification"
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
    c.label_smoothing = 0.0
    c.reinit_top_layers = 0

    c.optim = default_optim_config()

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
    c.export_hf = True
    c.tensorboard = True
    c.progress = True
    c.debug_sigterm_at_step = config_dict.placeholder(int)  # tests only: SIGTERM self at this step
    return c
