"""Read a jaxbert environment switch that takes one of a few named values."""

from __future__ import annotations

import os


def env_choice(var: str, choices: tuple[str, ...]) -> str:
    """The value of ``var``, case- and space-insensitive; ``choices[0]`` when unset or empty.

    Anything else is a ``ValueError`` naming the variable, its value and the known choices.
    """
    raw = os.environ.get(var, "")
    choice = raw.strip().lower() or choices[0]
    if choice not in choices:
        raise ValueError(f"{var}={raw!r}; known: {', '.join(choices)}")
    return choice
