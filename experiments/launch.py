r"""Run an experiment config: ``python -m experiments.launch --config CONFIG.py[:ARG] --workdir DIR``.

``--config.key=value`` overrides any key of the config (nested keys with dots). An unknown key
stops with an error that lists the nearest valid keys. Re-running with the same workdir
resumes from its latest checkpoint. Multi-host: start one process per host with
``--coordinator HOST:PORT --num_processes N --process_id I`` (or let the platform's
``jax.distributed.initialize()`` auto-detection do it with ``--distributed``).
"""

from __future__ import annotations

import difflib
import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (path[:arg])", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, export)")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection")
flags.DEFINE_bool("cpu_collectives", False, "use gloo CPU collectives (multi-process on CPU)")


def all_keys(config, prefix: str = "") -> list[str]:
    """Every dotted key of a ConfigDict, nested ones included."""
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if hasattr(v, "items") and hasattr(v, "to_dict"):
            out.extend(all_keys(v, prefix + k + "."))
    return out


def check_overrides(argv: list[str], config) -> None:
    """Fail with suggestions when a ``--config.x=`` override names a key the config lacks.

    config_flags already rejects such keys; this turns its message into one that lists the
    nearest valid keys.
    """
    keys = all_keys(config)
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            key = arg[len("--config."):].split("=", 1)[0]
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=5, cutoff=0.5)
                raise SystemExit(f"error: unknown config key {key!r}. Nearest valid keys: {close or keys[:10]}")


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
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2, default=str))
    return 0 if result["status"] in ("done", "preempted") else 1


def run() -> None:
    # First, before jax starts its threads: reuse freed host memory (no page faults per step).
    from jaxbert.host_memory import keep_freed_host_memory
    keep_freed_host_memory()
    # Validate overrides before absl parses them, so the message can suggest valid keys.
    argv = sys.argv
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None and "--config" in argv:
        config_arg = argv[argv.index("--config") + 1]
    if config_arg:
        path, _, arg = config_arg.partition(":")
        import importlib.util
        spec = importlib.util.spec_from_file_location("_jaxbert_cfg", path)
        if spec is None or not __import__("os").path.exists(path):
            raise SystemExit(f"error: config file {path} does not exist")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        check_overrides(argv, module.get_config(arg) if arg else module.get_config())
    app.run(main)


if __name__ == "__main__":
    run()
