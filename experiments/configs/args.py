r"""The ``ARG`` of ``--config experiments/configs/FILE.py:ARG``: one parser for every config file.

A config declares its arguments once, as defaults, and parses them with :func:`parse_arg`::

    ARGS = {"dataset": "rotten_tomatoes", "runlocal": False, "tiny": False}

    def get_config(arg: str | None = None):
        a = parse_arg(arg, ARGS, positional=("dataset",), choices={"dataset": DATASETS})
        ...  # a.dataset, a.runlocal, a.tiny

``ARG`` is comma-separated words (big_vision's ``:key=value,flag`` convention, plus positional
words so the existing short forms keep working):

* ``key=value``: sets ``key`` (any key of the defaults); the value is converted to the type of the
  default (``bool``: ``True``/``False``/``1``/``0``; ``int``; ``float``; ``str``; a ``None`` default
  takes the string as given);
* a flag: the name of a key whose default is a ``bool`` sets it ``True`` (``runlocal``);
* any other word: the value of the next ``positional`` key not yet given (``trec`` -> ``dataset``).

So ``trec,tiny,runlocal``, ``dataset=trec,tiny=True,runlocal`` and ``tiny,trec,runlocal`` are the
same argument. Unknown words, unknown keys, a key given twice, a value outside ``choices`` and a
value of the wrong type each stop with a one-line ``ValueError`` that names the known arguments.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import ml_collections

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _convert(key: str, text: str, default: Any) -> Any:
    """``text`` as the type of ``default`` (the value given for ``key``)."""
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"config argument {key}={text!r}: expected True or False")
    if default is None or isinstance(default, str):
        return text
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(f"config argument {key}={text!r}: expected {type(default).__name__}") from None


def known_arguments(defaults: Mapping[str, Any], positional: Sequence[str] = (),
                    choices: Mapping[str, Iterable] | None = None) -> str:
    """One-line summary of the arguments, e.g. ``"dataset (trec|sms_spam), runlocal, tiny, init=..."``."""
    parts = []
    for key, default in defaults.items():
        if key in (choices or {}):
            parts.append(f"{key} ({'|'.join(map(str, choices[key]))})")
        elif isinstance(default, bool):
            parts.append(key)
        elif key in positional:
            parts.append(f"{key} (default {default!r})")
        else:
            parts.append(f"{key}=...")
    return ", ".join(parts)


def parse_arg(arg: str | None, defaults: Mapping[str, Any], *, positional: Sequence[str] = (),
              choices: Mapping[str, Iterable] | None = None) -> ml_collections.ConfigDict:
    """Parse a config file's argument string against its ``defaults``.

    Args:
      arg: the string after ``FILE.py:`` (``None`` or ``""``: every default).
      defaults: ``{key: default}`` of every argument; a ``bool`` default makes ``key`` a flag.
      positional: keys that bare words fill, in order (each also settable as ``key=value``).
      choices: ``{key: allowed values}`` (any iterable, e.g. a dict's keys) checked after parsing.
    Returns:
      A ``ConfigDict`` with one entry per key of ``defaults`` (attribute access: ``a.runlocal``).
    Raises:
      ValueError: one line naming the problem and the known arguments.
    """
    unknown_pos = [k for k in positional if k not in defaults]
    if unknown_pos:
        raise ValueError(f"parse_arg: positional keys {unknown_pos} have no default in {sorted(defaults)}")
    given: dict[str, Any] = {}
    free = [k for k in positional]
    unknown: list[str] = []
    known = lambda: known_arguments(defaults, positional, choices)  # noqa: E731

    def put(key: str, value: Any) -> None:
        if key in given:
            raise ValueError(f"config argument {key}= given twice ({given[key]!r}, {value!r}); known: {known()}")
        given[key] = value
        if key in free:
            free.remove(key)

    for word in (w.strip() for w in (arg or "").split(",")):
        if not word:
            continue
        if "=" in word:
            key, text = (s.strip() for s in word.split("=", 1))
            if key not in defaults:
                raise ValueError(f"unknown config argument {key!r} (in {word!r}); known: {known()}")
            if not text:
                raise ValueError(f"config argument {key}= needs a value; known: {known()}")
            put(key, _convert(key, text, defaults[key]))
        elif isinstance(defaults.get(word), bool):
            put(word, True)
        elif free:
            put(free[0], _convert(free[0], word, defaults[free[0]]))
        else:
            unknown.append(word)
    if unknown:
        raise ValueError(f"unknown config flags {sorted(unknown)}; known: {known()}")
    for key, allowed in (choices or {}).items():
        allowed = list(allowed)
        value = given.get(key, defaults[key])
        if value not in allowed:
            raise ValueError(f"unknown {key} {value!r}; known: {allowed}")
    return ml_collections.ConfigDict({k: given.get(k, v) for k, v in defaults.items()}, type_safe=False)
