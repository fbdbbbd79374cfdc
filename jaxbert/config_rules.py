"""Range rules for config values: the vocabulary the engine and each task declare their keys' ranges in.

A :class:`Rule` says that a dotted config key must pass a test, with the allowed range in words;
:func:`int_at_least`, :func:`number_in` and :func:`one_of` build the usual ones. The engine's
table and :func:`~jaxbert.train.config_checks.check_config` live in :mod:`jaxbert.train.config_checks`;
tasks declare theirs in :meth:`jaxbert.tasks.base.Task.config_rules`. This module sits below both
(it imports nothing of jaxbert), so tasks need not import the training layer above them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ConfigValueError", "Rule", "int_at_least", "number_in", "one_of"]


class ConfigValueError(ValueError):
    """A config value outside its allowed range; the message names the key, the value and the range."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """``key`` (dotted) must satisfy ``test``; ``allowed`` says the range in words, ``meaning`` what the key is.

    ``none_ok``: None is a valid value (a documented "unset"). A key absent from the config is not checked
    (unknown and missing keys are the launcher's job).
    """

    key: str
    test: Callable[[Any], bool]
    allowed: str
    meaning: str = ""
    none_ok: bool = False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_at_least(key: str, low: int, meaning: str = "", *, none_ok: bool = False) -> Rule:
    """``key`` is an int >= ``low``."""
    return Rule(key, lambda v: _is_int(v) and v >= low, f"an int >= {low}", meaning, none_ok)


def number_in(key: str, low: float, high: float, meaning: str = "", *, low_open: bool = False,
              high_open: bool = False, none_ok: bool = False) -> Rule:
    """``key`` is a finite number in the interval ``[low, high]`` (``(`` / ``)`` with the ``*_open`` flags;
    ``high=math.inf`` for no upper bound)."""
    def test(v: Any) -> bool:
        if not _is_real(v) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below
    hi = "inf)" if math.isinf(high) else f"{high:g}{')' if high_open else ']'}"
    allowed = f"a finite number in {'(' if low_open else '['}{low:g}, {hi}"
    return Rule(key, test, allowed, meaning, none_ok)


def one_of(key: str, choices: Iterable[Any], meaning: str = "") -> Rule:
    """``key`` is one of ``choices``."""
    choices = tuple(choices)
    return Rule(key, lambda v: v in choices, f"one of {list(choices)}", meaning)
