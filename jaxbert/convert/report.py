"""The strict load report: what happened to each key, and the one checkpoint-mismatch error type."""

from __future__ import annotations

import dataclasses


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys, shapes or dtypes do not match the model (HF conversion, training restores);
    the message lists every problem."""


@dataclasses.dataclass
class LoadReport:
    """What happened to each key while loading (all lists of key/path strings)."""

    missing: list[str] = dataclasses.field(default_factory=list)  # model params absent from the checkpoint
    unexpected: list[str] = dataclasses.field(default_factory=list)  # checkpoint keys no rule knows
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)  # (path, ckpt, model)
    initialized: list[str] = dataclasses.field(default_factory=list)  # head params freshly initialised
    ignored: list[str] = dataclasses.field(default_factory=list)  # benign or other-task keys
    adapted: list[str] = dataclasses.field(default_factory=list)  # notes from ArchitectureSpec.prepare_state

    def problems(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"missing from checkpoint ({len(self.missing)}): {preview(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in checkpoint ({len(self.unexpected)}): {preview(self.unexpected)}")
        if self.mismatched:
            lines.append("shape mismatches: " + "; ".join(f"{p}: checkpoint {c} vs model {m}"
                                                          for p, c, m in self.mismatched[:20]))
        return "\n".join(lines)


def preview(items: list[str], n: int = 20) -> str:
    """The first ``n`` items joined by commas, with a count of the rest."""
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
