"""Test helper: train a task with the engine, then rebuild it from its checkpoint.

``train_and_restore(config, workdir) -> (trained, restored)``: each a ``(task, params)`` pair.
``trained`` is the Trainer's task and final params after ``run()``; ``restored`` is a fresh
Trainer's task (built from the same config) with the params of the latest checkpoint and the
task's ``extra_state`` given back through ``load_extra_state``.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxbert.train.checkpoint import Checkpointer
from jaxbert.train.loop import Trainer
from jaxbert.train.state import abstract_train_state


def quiet(config):
    config.progress = False
    config.tensorboard = False
    config.export_hf = False
    config.log_every = 1
    return config


def train_and_restore(config, workdir):
    trainer = Trainer(config, workdir)
    result = trainer.run()
    assert result["status"] == "done", result
    trained = (trainer.task, trainer.final_state.params)

    fresh = Trainer(config, workdir)
    with Checkpointer(workdir, keep_last=None) as ckpt, jax.set_mesh(fresh.mesh), \
            nn.logical_axis_rules(fresh.rules):
        state, extra = ckpt.restore(abstract_state=abstract_train_state(
            fresh.task.model, fresh.tx, fresh.shardings, fresh.task.sample_input))
    fresh.task.load_extra_state(extra)
    return trained, (fresh.task, state.params), result
