"""Tasks the training loop can run: each builds its model, data, loss, metrics and export.

The contract is declared in :mod:`jaxbert.tasks.base` (:class:`~jaxbert.tasks.base.TaskProtocol`,
the :class:`~jaxbert.tasks.base.Task` base class with loading, PEFT, export and eval hooks, and
the ``@register(name)`` registry read by :func:`get_task`).
"""

from __future__ import annotations

from jaxbert.tasks.base import Task, TaskProtocol, get_task, register, task_names

__all__ = ["Task", "TaskProtocol", "get_task", "register", "task_names"]
