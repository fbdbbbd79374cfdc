r"""Evaluate a config's *initial* model (step 0, before any update) on its eval splits.

The training loop evaluates every ``eval_every`` steps and at the end, never before the first
update; this gives the step-0 numbers of the same run (same task, data, seed, hence the same
initial parameters: random init, or ``model.init_from``)::

    python -m experiments.eval_initial --config experiments/configs/m2_pretrain.py:tiny --workdir /tmp/m2_step0
    python -m experiments.eval_initial \
        --config experiments/configs/m2_retrieval.py:tiny,init=runs/m2_tiny_brown/export --workdir /tmp/ret_step0

Writes ``<workdir>/initial_eval.json`` (``{"step": 0, "<split>": {metric: value}}``) and prints it.
``--config.key=value`` overrides work as in ``experiments.launch``. Nothing is trained or checkpointed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from absl import app, flags

from experiments.config_flag import define_config_flag

FLAGS = flags.FLAGS
# --config PATH[:ARG]: defined under __main__ from the config file, loaded once.
flags.DEFINE_string("workdir", None, "where initial_eval.json is written")


def evaluate_initial(config: Any, workdir: str | Path) -> dict[str, Any]:
    """``{"step": 0, split: metrics}`` of the run's initial parameters on every eval split of ``config``."""
    import flax.linen as nn
    import jax

    from jaxbert.train.loop import Trainer

    trainer = Trainer(config, workdir)
    out: dict[str, Any] = {"step": 0}
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        state = trainer._new_state()
        for split in trainer.task.eval_sources:
            out[split] = trainer.evaluate(state.params, split)
    return out


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise SystemExit("error: --workdir is required")
    workdir = Path(FLAGS.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = evaluate_initial(FLAGS.config, workdir)
    (workdir / "initial_eval.json").write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    import sys
    app.run(main, argv=define_config_flag(sys.argv))
