"""The config the multi-device / multi-process test scripts train: a tiny random BERT on trec rows.

``make_config(train, test, mesh)``: ``trec,tiny,runlocal`` with dropout off (exact comparisons),
a constant learning rate from step 0 (so every step changes the params), global batch 16,
3 steps, 4 attention heads (bert-tiny has 2; 4 divides a 4-way ``tensor`` axis), and no
progress bar / TensorBoard / HF export.
"""

from __future__ import annotations


def make_config(train: str, test: str, mesh=(("data", -1), ("fsdp", 1), ("tensor", 1))):
    from experiments.configs.finetune_classification import get_config

    c = get_config("trec,tiny,runlocal")
    c.data.train, c.data.test = train, test
    c.model.overrides.hidden_dropout_prob = 0.0
    c.model.overrides.attention_probs_dropout_prob = 0.0
    c.model.overrides.num_attention_heads = 4
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_train_steps = 3
    c.log_every = 1
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.progress = False
    c.tensorboard = False
    c.export_hf = False
    c.mesh = tuple(mesh)
    return c
