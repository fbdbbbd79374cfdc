r"""The ``--config PATH[:ARG]`` flag of ``experiments.launch`` and ``experiments.eval_initial``.

With ``launch --eval_only`` / ``--export_only`` the config is instead the one a run saved in
``WORKDIR/config.json`` (:func:`define_saved_config_flag`); ``--config.key=value`` overrides
apply to it the same way.

The config file is executed once: :func:`define_config_flag` takes ``--config`` out of ``argv``,
loads ``PATH`` and calls its ``get_config(ARG)`` (ml_collections' ``path:arg`` convention: ``ARG``
is everything after the first colon), checks every ``--config.key=value`` override against the
result (an unknown key stops with the nearest valid keys), and defines the ``config`` absl flag
from that ``ConfigDict`` (``config_flags.DEFINE_config_dict``), which applies the overrides when
absl parses the remaining arguments.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections
from ml_collections import config_flags


def all_keys(config: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a ConfigDict, nested ones included."""
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if hasattr(v, "items") and hasattr(v, "to_dict"):
            out.extend(all_keys(v, prefix + k + "."))
    return out


def check_overrides(argv: Sequence[str], config: Any) -> None:
    """Fail with suggestions when a ``--config.x=`` override names a key the config lacks.

    config_flags would reject such keys too; this message lists the nearest valid keys.
    """
    keys = all_keys(config)
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            key = arg[len("--config."):].split("=", 1)[0]
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=5, cutoff=0.5)
                raise SystemExit(f"error: unknown config key {key!r}. Nearest valid keys: {close or keys[:10]}")


def split_config_arg(argv: Sequence[str]) -> tuple[str, list[str]]:
    """``(PATH[:ARG], argv without it)`` from ``--config=X`` or ``--config X``."""
    rest, spec = [], None
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config":
            if i + 1 >= len(argv):
                raise SystemExit("error: --config needs a value: PATH[:ARG]")
            spec = argv[i + 1]
            next(it)
        else:
            rest.append(a)
    if not spec:
        raise SystemExit("error: --config PATH[:ARG] is required (an experiments/configs/*.py file)")
    return spec, rest


def load_config(spec: str) -> Any:
    """``get_config(ARG)`` of the file ``PATH`` (``get_config()`` when ``spec`` has no ``:ARG``)."""
    path, sep, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise SystemExit(f"error: config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location("_jaxbert_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise SystemExit(f"error: config file {path} has no get_config()")
    try:
        return module.get_config(arg) if sep else module.get_config()
    except ValueError as e:  # a bad ARG (parse_arg's one-line messages)
        raise SystemExit(f"error: {spec}: {e}") from None


def define_config_flag(argv: Sequence[str]) -> list[str]:
    """Load the ``--config`` of ``argv`` once, check its overrides, define the ``config`` flag.

    Returns ``argv`` without ``--config PATH[:ARG]``, for ``absl.app.run(main, argv=...)``;
    ``FLAGS.config`` is then the loaded ``ConfigDict`` (locked) with the overrides applied.
    """
    spec, rest = split_config_arg(list(argv))
    config = load_config(spec)
    check_overrides(rest, config)
    config_flags.DEFINE_config_dict("config", config, f"experiment config ({spec})", lock_config=True,
                                    sys_argv=rest)
    return rest


def flag_value(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name=V`` or ``--name V`` in ``argv`` (the last one wins), else None."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def bool_flag(argv: Sequence[str], name: str) -> bool:
    """absl's spellings of a boolean flag: ``--name``, ``--name=true|false|1|0``, ``--noname``."""
    on = False
    for a in argv:
        if a == f"--{name}":
            on = True
        elif a == f"--no{name}":
            on = False
        elif a.startswith(f"--{name}="):
            on = a.split("=", 1)[1].lower() in ("true", "1", "t", "yes")
    return on


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the configs use (mesh, eval_splits, labels, axis rules)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load_saved_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run saved in ``workdir/config.json``, as a ``ConfigDict``."""
    path = os.path.join(os.fspath(workdir), "config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: {path} does not exist: --eval_only / --export_only read the config a run "
                         "saved in its --workdir (is this a run directory?)") from None
    except ValueError as e:
        raise SystemExit(f"error: {path} is not valid JSON ({e})") from None
    if not isinstance(saved, dict):
        raise SystemExit(f"error: {path} holds a {type(saved).__name__}, not a config object")
    return ml_collections.ConfigDict(_tuples(saved))


def define_saved_config_flag(argv: Sequence[str], mode_flag: str) -> list[str]:
    """Define the ``config`` flag from ``--workdir``'s saved ``config.json`` (for ``mode_flag``).

    ``--config PATH`` is refused (the run's own config is used); ``--config.key=value``
    overrides are checked against the saved config and applied. Returns ``argv`` unchanged.
    """
    argv = list(argv)
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        raise SystemExit(f"error: {mode_flag} uses the config saved in the workdir; drop --config "
                         "(change keys with --config.KEY=VALUE)")
    workdir = flag_value(argv, "workdir")
    if not workdir:
        raise SystemExit(f"error: {mode_flag} needs --workdir (a run directory)")
    config = load_saved_config(workdir)
    check_overrides(argv, config)
    config_flags.DEFINE_config_dict("config", config, f"config saved in {workdir}/config.json",
                                    lock_config=True, sys_argv=argv)
    return argv
