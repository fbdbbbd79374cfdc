"""The strict load report: what happened to each key, and the one checkpoint-mismatch error type.

A checkpoint key ends up in exactly one list: loaded (in no list), ``unexpected`` (no rule knows
it), ``unplaced`` (a rule maps it, but the model built from the config has no such parameter:
layers beyond ``num_hidden_layers``, a bias the config turned off, a head part the model lacks),
``mismatched`` (shape), or ``ignored`` (buffers, tied copies, heads of other tasks, and modules a
configuration legitimately omits, such as the pooler of an MLM model). Under strict loading the
first three (and ``missing`` model parameters) are errors.
"""

from __future__ import annotations

import dataclasses
import re


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys, shapes or dtypes do not match the model (HF conversion, training restores);
    the message lists every problem."""


@dataclasses.dataclass
class LoadReport:
    """What happened to each key while loading (all lists of key/path strings)."""

    missing: list[str] = dataclasses.field(default_factory=list)  # model params absent from the checkpoint
    unexpected: list[str] = dataclasses.field(default_factory=list)  # checkpoint keys no rule knows
    unplaced: list[str] = dataclasses.field(default_factory=list)  # a rule matched; the model has no such param
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)  # (path, ckpt, model)
    initialized: list[str] = dataclasses.field(default_factory=list)  # head params freshly initialised
    ignored: list[str] = dataclasses.field(default_factory=list)  # benign or other-task keys
    adapted: list[str] = dataclasses.field(default_factory=list)  # notes from ArchitectureSpec.prepare_state
    hints: list[str] = dataclasses.field(default_factory=list)  # likely causes, appended to problems()

    def problems(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"missing from checkpoint ({len(self.missing)}): {preview(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in checkpoint ({len(self.unexpected)}): {preview(self.unexpected)}")
        if self.unplaced:
            lines.append(f"in checkpoint but no place in the model ({len(self.unplaced)}): "
                         f"{compact_keys(self.unplaced)}")
        if self.mismatched:
            lines.append("shape mismatches: " + "; ".join(f"{p}: checkpoint {c} vs model {m}"
                                                          for p, c, m in self.mismatched[:20]))
        if lines:
            lines.extend(f"likely cause: {h}" for h in self.hints)
        return "\n".join(lines)

    def has_problems(self) -> bool:
        """True when strict loading refuses this checkpoint."""
        return bool(self.missing or self.unexpected or self.unplaced or self.mismatched)


def preview(items: list[str], n: int = 20) -> str:
    """The first ``n`` items joined by commas, with a count of the rest."""
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


_INDEX = re.compile(r"(?<=[.])(\d+)(?=[.])")


def compact_keys(keys: list[str], n: int = 20) -> str:
    """Keys grouped by their first numeric component: ``encoder.layer.4-5.* (24 tensors)``; others listed."""
    groups: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    loose = []
    for key in keys:
        m = _INDEX.search(key)
        if m is None:
            loose.append(key)
            continue
        head = key[:m.start()]
        groups.setdefault(head, set()).add(int(m.group(1)))
        counts[head] = counts.get(head, 0) + 1
    parts = [f"{head}{_ranges(sorted(groups[head]))}.* ({counts[head]} tensor{'s' * (counts[head] != 1)})"
             for head in groups]
    return preview(parts + loose, n)


def _ranges(values: list[int]) -> str:
    """``[4, 5, 7]`` -> ``"4-5,7"``."""
    out, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur is None or cur != prev + 1:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(out)
