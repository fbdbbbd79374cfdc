"""Sequence packing: many short sequences per fixed-length row, separated by segment ids.

    units = [(ids, word_ids), ...]            # each already [CLS] ... [SEP], length <= L
    rows = pack_rows(units, length=128, pad_token_id=0)
    rows["segment_ids"]   # [N, L]: 1, 2, ... per packed sequence, 0 = padding
    packing_efficiency(rows["attention_mask"])   # non-pad fraction

The model turns ``segment_ids`` into an attention mask (a token attends only to its own
segment: :func:`jaxbert.models.layers.attention.segment_mask`) and restarts position ids at
every segment, so a packed sequence's outputs equal its outputs when run alone.

Bins are filled first-fit-decreasing (sort by length, put each sequence in the first row with
room); ``strategy="sequential"`` keeps the input order and starts a new row when the next
sequence does not fit (cheaper, streaming, lower efficiency).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pack_rows", "packing_efficiency", "plan_bins", "segment_positions"]


def plan_bins(lengths: Sequence[int], length: int, strategy: str = "ffd") -> list[list[int]]:
    """Group sequence indices into rows of capacity ``length``; each sequence lands in exactly one row."""
    lengths = [int(n) for n in lengths]
    too_long = [i for i, n in enumerate(lengths) if n > length]
    if too_long:
        raise ValueError(f"{len(too_long)} sequence(s) are longer than the row length {length} "
                         f"(first: #{too_long[0]} with {lengths[too_long[0]]} tokens); chunk them first")
    if strategy == "sequential":
        bins, room = [], []
        for i, n in enumerate(lengths):
            if bins and room[-1] >= n:
                bins[-1].append(i)
                room[-1] -= n
            else:
                bins.append([i])
                room.append(length - n)
        return bins
    if strategy != "ffd":
        raise ValueError(f"unknown packing strategy {strategy!r}; known: ['ffd', 'sequential']")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room = np.zeros(0, np.int64)
    for i in order:
        n = lengths[i]
        fits = np.flatnonzero(room >= n)
        if len(fits):
            b = int(fits[0])
            bins[b].append(i)
            room[b] -= n
        else:
            bins.append([i])
            room = np.append(room, length - n)
    return [sorted(b) for b in bins]


def pack_rows(units: Sequence[tuple[np.ndarray, np.ndarray]], length: int, pad_token_id: int = 0,
              packing: bool = True, strategy: str = "ffd") -> dict[str, np.ndarray]:
    """Pack ``(token_ids, word_ids)`` sequences into ``[N, length]`` int32 arrays.

    Returns ``input_ids``, ``word_ids`` (made unique within a row; -1 for specials/padding),
    ``segment_ids`` (1-based per sequence, 0 = padding), ``position_ids`` (restart at 0 in
    every segment) and ``attention_mask``. ``packing=False`` puts one sequence per row.
    """
    if not units:
        raise ValueError("nothing to pack: no sequences")
    lengths = [len(u[0]) for u in units]
    bins = plan_bins(lengths, length, strategy) if packing else [[i] for i in range(len(units))]
    if not packing and max(lengths) > length:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit rows of length {length}")
    n = len(bins)
    ids = np.full((n, length), pad_token_id, np.int32)
    words = np.full((n, length), -1, np.int32)
    seg = np.zeros((n, length), np.int32)
    pos = np.zeros((n, length), np.int32)
    for r, b in enumerate(bins):
        at, word_base = 0, 0
        for s, i in enumerate(b, start=1):
            t, w = np.asarray(units[i][0], np.int32), np.asarray(units[i][1], np.int32)
            k = len(t)
            ids[r, at:at + k] = t
            words[r, at:at + k] = np.where(w >= 0, w + word_base, -1)
            seg[r, at:at + k] = s
            pos[r, at:at + k] = np.arange(k)
            if (w >= 0).any():
                word_base += int(w.max()) + 1
            at += k
    return {"input_ids": ids, "word_ids": words, "segment_ids": seg, "position_ids": pos,
            "attention_mask": (seg > 0).astype(np.int32)}


def segment_positions(segment_ids: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Position ids restarting at 0 in each segment, counting only ``visible`` tokens (numpy).

    Invisible tokens (e.g. the tokens an n-gram [MASK] replaced) get the position of the
    previous visible token; they are masked out of attention anyway.
    """
    seg = np.asarray(segment_ids)
    vis = np.ones_like(seg, bool) if visible is None else np.asarray(visible, bool)
    vis = vis & (seg > 0)
    flat_seg = seg.reshape(-1, seg.shape[-1])
    flat_vis = vis.reshape(-1, seg.shape[-1])
    out = np.zeros_like(flat_seg)
    for r in range(flat_seg.shape[0]):
        c = np.cumsum(flat_vis[r])
        starts = np.concatenate([[True], flat_seg[r, 1:] != flat_seg[r, :-1]])
        base = np.maximum.accumulate(np.where(starts, c - flat_vis[r], 0))
        out[r] = np.maximum(c - base - 1, 0)
    return out.reshape(seg.shape).astype(np.int32)


def packing_efficiency(attention_mask: np.ndarray) -> float:
    """Fraction of non-padding tokens."""
    m = np.asarray(attention_mask)
    return float(m.sum() / max(m.size, 1))
