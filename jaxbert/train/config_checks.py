"""Range checks of a run's config values, done before anything is built or trained.

A value outside its range would otherwise fail late and obscurely (``grad_accum_steps=0`` is a
ZeroDivisionError inside the step builder, ``eval_batch_size=0`` loses the run at the final
evaluation) or be accepted with a silent meaning (``num_train_steps=0`` trained a full epoch).
:func:`check_config` walks one declarative table, :data:`ENGINE_RULES`, plus the rules a task
declares for its own section (:meth:`jaxbert.tasks.base.Task.config_rules`), and raises
:class:`ConfigValueError` naming the key, the value and the allowed range::

    check_config(config)   # ConfigValueError: grad_accum_steps=0: must be an int >= 1; micro-batches per step

:func:`check_best_metric` needs the built task: ``checkpoint.best_metric`` must be
``<split>/<metric>`` for a metric the task reports on a split it evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jaxbert.config_rules import ConfigValueError, Rule, int_at_least, number_in, one_of

__all__ = ["ConfigValueError", "ENGINE_RULES", "check_config", "check_best_metric"]


_INF = math.inf

#: Engine keys (experiments/configs/common.py, jaxbert/train/optim.py): what each range protects.
ENGINE_RULES: tuple[Rule, ...] = (
    int_at_least("seed", 0, "RNG and shuffle seed"),
    int_at_least("batch_size", 1, "global training batch"),
    int_at_least("eval_batch_size", 1, "global evaluation batch"),
    int_at_least("grad_accum_steps", 1, "micro-batches per step"),
    number_in("num_epochs", 0, _INF, "passes over train when num_train_steps is None", low_open=True),
    int_at_least("num_train_steps", 1, "training steps (None: from num_epochs)", none_ok=True),
    int_at_least("reinit_top_layers", 0, "top encoder layers re-initialised before training"),
    int_at_least("log_every", 1, "steps per train-metrics row"),
    int_at_least("eval_every", 0, "steps between evaluations; 0 = only at the end"),
    int_at_least("checkpoint.every", 0, "steps between periodic saves; 0 = only at evaluations, "
                 "preemption and the end"),
    int_at_least("checkpoint.keep_last", 1, "newest checkpoints kept (None: all)", none_ok=True),
    int_at_least("checkpoint.keep_best", 0, "best checkpoints kept besides the newest", none_ok=True),
    one_of("checkpoint.best_mode", ("max", "min"), "whether a larger best_metric is better"),
    int_at_least("data.max_length", 2, "tokens per row, [CLS] and [SEP] included"),
    number_in("model.overrides.hidden_dropout_prob", 0, 1, "dropout probability", high_open=True, none_ok=True),
    number_in("model.overrides.attention_probs_dropout_prob", 0, 1, "dropout probability", high_open=True,
              none_ok=True),
    number_in("optim.learning_rate", 0, _INF, "peak learning rate", low_open=True),
    number_in("optim.b1", 0, 1, "first-moment decay", high_open=True),
    number_in("optim.b2", 0, 1, "second-moment decay", high_open=True),
    number_in("optim.eps", 0, _INF, "optimizer epsilon", low_open=True),
    number_in("optim.weight_decay", 0, _INF, "decoupled weight decay"),
    number_in("optim.momentum", 0, 1, "sgd momentum", high_open=True),
    number_in("optim.grad_clip_norm", 0, _INF, "global-norm clip; 0 or None = off", none_ok=True),
    int_at_least("optim.warmup_steps", 0, "warmup steps (None: from warmup_ratio)", none_ok=True),
    number_in("optim.warmup_ratio", 0, 1, "warmup as a fraction of the steps", none_ok=True),
    int_at_least("optim.total_steps", 1, "schedule length (None: the run's steps)", none_ok=True),
    number_in("optim.decay_ratio", 0, 1, "WSD: fraction of the steps spent decaying"),
    number_in("optim.end_lr_factor", 0, 1, "final learning rate as a fraction of the peak"),
    int_at_least("optim.freeze_lower_layers", 0, "encoder layers frozen from the bottom"),
    number_in("optim.layerwise_lr_decay", 0, 1, "per-layer learning-rate factor; 1 = off", low_open=True),
)

_MISSING = object()


def _lookup(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        try:
            if isinstance(node, Mapping) or hasattr(node, "keys"):
                if part not in node:
                    return _MISSING
                node = node[part]
            else:
                return _MISSING
        except (KeyError, AttributeError, TypeError):
            return _MISSING
    return node


def _task_rules(config: Any) -> tuple[Rule, ...]:
    name = _lookup(config, "task")
    if not isinstance(name, str):
        return ()
    from jaxbert.tasks import get_task  # pylint: disable=import-outside-toplevel
    try:
        cls = get_task(name)
    except ValueError:
        return ()  # an unknown task is reported when the task is built
    rules = getattr(cls, "config_rules", None)
    return tuple(rules()) if callable(rules) else ()


def _fail(rule: Rule, value: Any) -> ConfigValueError:
    what = f"; {rule.meaning}" if rule.meaning else ""
    none = " or None" if rule.none_ok else ""
    return ConfigValueError(f"{rule.key}={value!r}: must be {rule.allowed}{none}{what}")


def check_config(config: Any, rules: Iterable[Rule] | None = None) -> None:
    """Raise :class:`ConfigValueError` for the first value outside its range.

    ``rules`` default: :data:`ENGINE_RULES` + the rules of ``config.task``'s class
    (:meth:`jaxbert.tasks.base.Task.config_rules`).
    """
    rules = tuple(ENGINE_RULES) + _task_rules(config) if rules is None else tuple(rules)
    for rule in rules:
        value = _lookup(config, rule.key)
        if value is _MISSING or (value is None and rule.none_ok):
            continue
        try:
            ok = bool(rule.test(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise _fail(rule, value)


def check_best_metric(config: Any, metric_names: Mapping[str, Iterable[str]], known_splits: Iterable[str] = (),
                      say: Callable[[str], None] | None = None) -> None:
    """``checkpoint.best_metric`` names a metric the task reports: ``<split>/<metric>``.

    ``metric_names``: ``{split: metric names}`` of every split this run evaluates
    (:meth:`jaxbert.tasks.base.Task.eval_metric_names`). ``known_splits``: every split name the task
    could evaluate (:meth:`jaxbert.tasks.base.Task.known_splits`, e.g. ``validation`` without a
    ``data.validation`` file, or a section of ``evals`` left out of ``eval_splits``): naming one that
    this run does not evaluate is not a typo, so only ``say`` reports that nothing will be ranked
    best (its metrics are unknown without its data). Empty/None best_metric: no ranking, nothing to
    check. Raises :class:`ConfigValueError` listing the valid names otherwise.
    """
    best = _lookup(config, "checkpoint.best_metric")
    if best is _MISSING or not best:
        return
    names = {split: set(ms) for split, ms in metric_names.items()}
    valid = sorted(f"{s}/{m}" for s, ms in names.items() for m in ms)
    if not isinstance(best, str) or "/" not in best:
        raise ConfigValueError(f"checkpoint.best_metric={best!r}: must be '<split>/<metric>', one of {valid}")
    split, metric = best.split("/", 1)
    if split in names:
        if metric not in names[split]:
            raise ConfigValueError(f"checkpoint.best_metric={best!r}: split {split!r} reports no metric "
                                   f"{metric!r}; valid: {valid}")
        return
    if split in set(known_splits):
        if say is not None:
            say(f"checkpoint.best_metric={best!r}: split {split!r} has no data in this run, so no checkpoint "
                f"is ranked best (evaluated: {sorted(names) or 'none'})")
        return
    raise ConfigValueError(f"checkpoint.best_metric={best!r}: {split!r} is not an evaluated split "
                           f"({sorted(names) or 'none'}); valid: {valid}")
