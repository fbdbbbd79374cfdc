r"""Run an experiment config: ``python -m experiments.launch --config CONFIG.py[:ARG] --workdir DIR``.

``--config.key=value`` overrides any key of the config (nested keys with dots). An unknown key
stops with an error that lists the nearest valid keys; the config file is executed once
(:mod:`experiments.config_flag`). Re-running with the same workdir
resumes from its latest checkpoint. Multi-host: start one process per host with
``--coordinator HOST:PORT --num_processes N --process_id I`` (or let the platform's
``jax.distributed.initialize()`` auto-detection do it with ``--distributed``).

A finished workdir run again does nothing (and says so). To redo one part of a run, e.g. after
its final evaluation or export failed (the trained state is checkpointed before both)::

    python -m experiments.launch --workdir DIR --eval_only    [--config.eval_batch_size=64]
    python -m experiments.launch --workdir DIR --export_only

These read the config saved in ``DIR/config.json`` (``--config.key=value`` overrides apply),
restore the latest checkpoint and evaluate (rows in ``metrics.jsonl`` replaced, not repeated;
``eval_results.json``) or export (``export/``, ``exported.json``).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from experiments.config_flag import bool_flag, define_config_flag, define_saved_config_flag

FLAGS = flags.FLAGS
# --config PATH[:ARG] is defined in run(), from the config file loaded there (once).
flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, export)")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection")
flags.DEFINE_bool("cpu_collectives", False, "use gloo CPU collectives (multi-process on CPU)")
flags.DEFINE_bool("eval_only", False, "evaluate the latest checkpoint of --workdir with its saved config, then stop")
flags.DEFINE_bool("export_only", False, "export the latest checkpoint of --workdir with its saved config, then stop")


def main(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
    import jax
    if FLAGS.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if FLAGS.coordinator:
        jax.distributed.initialize(FLAGS.coordinator, num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()
    if not FLAGS.workdir:
        raise SystemExit("error: --workdir is required")
    from jaxbert.train.loop import train_and_evaluate
    only = "eval" if FLAGS.eval_only else "export" if FLAGS.export_only else None
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir, only=only)
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2, default=str))
    return 0 if result["status"] in ("done", "preempted") else 1


def run() -> None:
    # First, before jax starts its threads: reuse freed host memory (no page faults per step).
    from jaxbert.host_memory import keep_freed_host_memory
    keep_freed_host_memory()
    # The config file runs once, here: overrides are checked against it (nearest valid keys on a
    # typo) before absl parses them into FLAGS.config.
    # --eval_only / --export_only take the config the run saved in its workdir instead.
    modes = [f"--{m}" for m in ("eval_only", "export_only") if bool_flag(sys.argv, m)]
    if len(modes) > 1:
        raise SystemExit("error: --eval_only and --export_only exclude each other (run one, then the other)")
    argv = define_saved_config_flag(sys.argv, modes[0]) if modes else define_config_flag(sys.argv)
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
