"""Preemption: SIGTERM becomes a flag the training loop polls at step boundaries.

:class:`PreemptionGuard` (or :func:`install_sigterm_handler`) records the signal without raising;
:func:`any_process` agrees on the flag across hosts (a collective in multi-process runs), so every
process saves and stops at the same step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["PreemptionGuard", "install_sigterm_handler", "any_process"]


class PreemptionGuard:
    """Turns SIGTERM (by default) into a flag the training loop polls.

    The handler only records the signal; it never raises or exits, so the loop can finish the
    current step, save, and return::

        with PreemptionGuard() as guard:
            for step in ...:
                state = train_step(state, batch)
                if any_process(guard.preempted):      # collective in multi-process runs
                    ckpt.save(step, state, extra, force=True)
                    ckpt.wait()
                    break

    In multi-process runs each host receives its own signal (possibly at different steps), so
    the flag must be agreed on with :func:`any_process` at the same step on every host (it is
    a collective: call it on every process, e.g. every step or every N steps). On Cloud TPU
    with the JAX distributed preemption service, ``multihost_utils.reached_preemption_sync_point``
    is an alternative.

    The previous handler is put back by :meth:`close` (or leaving the ``with`` block). Signal
    handlers can only be installed from the main thread.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM,), install: bool = True):
        self.signals = tuple(signals)
        self._event = threading.Event()
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        if install:
            self.install()

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.received.append(signum)
        self._event.set()

    def install(self) -> PreemptionGuard:
        if self._previous:
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be installed from the main thread")
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)
        return self

    @property
    def preempted(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self.preempted

    def close(self) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> PreemptionGuard:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.close()


def install_sigterm_handler() -> PreemptionGuard:
    """Installs a SIGTERM flag handler; the returned guard is callable: ``is_preempted()``.

    Call ``.close()`` on it to restore the previous handler.
    """
    return PreemptionGuard()


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process. A collective when ``process_count() > 1``."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))
    return bool(np.any(flags))
