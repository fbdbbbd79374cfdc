"""Unpadded execution: gather the real tokens of a padded batch into a packed stream, scatter back.

A padded batch ``[b, l]`` with ``attention_mask`` holds ``n <= b*l`` real tokens. Unpadded
execution runs the encoder on those tokens only, laid out as a *stream* ``[r, R]``:

* the host computes a **plan** (:func:`plan`): an int32 ``gather_index [r, R]`` of flat
  positions (``row * l + col``) into the padded batch; empty slots hold the sentinel ``b*l``.
  Sequences are bin-packed whole into stream rows of length ``R`` (first-fit decreasing), so
  attention per stream row costs ``R^2`` rather than ``(r*R)^2``; ``r`` is rounded up to a small
  set of bucket sizes so that a jitted step compiles a handful of shapes only;
* the model gathers ids / positions / token types through the index (:func:`gather`), runs every
  layer on ``[r, R, ...]`` with attention restricted by segment ids (one segment per original
  row, so sequences sharing a stream row never see each other), and scatters the output back
  to ``[b, l, ...]`` (:func:`scatter`) with zeros at padding.

Because positions are gathered with the tokens (not recomputed from the stream index), ALiBi,
RoPE and sliding windows see the original positions and the real tokens' outputs equal the
padded execution's.

Shapes: the plan's shape is static (it is the jit cache key); its values are data. A batch of
``b`` rows of length ``l`` has at most ``b`` stream rows of ``R = l`` (the layout
:func:`identity_plan` builds inside jit when no host plan is given: correct, but no saving).
``R = b * l`` with one stream row is the literal "one packed stream" layout (attention over
``R^2``: only sensible for small batches).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def bucket_size(n: int, capacity: int, num_buckets: int) -> int:
    """The smallest of ``ceil(capacity * k / num_buckets)``, ``k = 1..num_buckets``, that holds ``n``."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    if n > capacity:
        raise ValueError(f"{n} items do not fit a capacity of {capacity}")
    for k in range(1, num_buckets + 1):
        size = math.ceil(capacity * k / num_buckets)
        if size >= n:
            return max(size, 1)
    return capacity


def _ffd(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """First-fit decreasing: indices of ``lengths`` grouped into bins of ``row_length``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = lengths[i]
        if n == 0:
            continue
        for j, free in enumerate(space):
            if free >= n:
                bins[j].append(i)
                space[j] -= n
                break
        else:
            bins.append([i])
            space.append(row_length - n)
    return bins


def plan(attention_mask: np.ndarray, row_length: int | None = None, num_buckets: int = 4) -> np.ndarray:
    """Host-side unpadding plan for a padded batch: int32 ``gather_index [r, R]``.

    ``attention_mask [b, l]`` (1 = real token). ``row_length`` ``R`` defaults to ``l`` (every
    sequence fits a row); ``R >= b*l`` gives one stream row whose length is bucketed instead.
    Stream rows are bucketed to one of ``num_buckets`` sizes between ``b/num_buckets`` and ``b``
    (a batch with no real token still gets one row of sentinels).
    """
    mask = np.asarray(attention_mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must be [batch, length], got shape {mask.shape}")
    b, l = mask.shape
    sentinel = b * l
    flat_pos = [np.flatnonzero(mask[i]) + i * l for i in range(b)]
    lengths = [len(p) for p in flat_pos]
    R = l if row_length is None else int(row_length)
    if R >= b * l:  # one stream: its length is the bucketed token count
        n = sum(lengths)
        size = bucket_size(max(n, 1), b * l, num_buckets)
        out = np.full((1, size), sentinel, np.int32)
        if n:
            out[0, :n] = np.concatenate(flat_pos)
        return out
    if R < max(lengths, default=0):
        raise ValueError(f"row_length={R} is shorter than the longest sequence ({max(lengths)} tokens)")
    bins = _ffd(lengths, R)
    capacity = max(b, len(bins))
    rows = bucket_size(max(len(bins), 1), capacity, num_buckets)
    out = np.full((rows, R), sentinel, np.int32)
    for r, members in enumerate(bins):
        members = sorted(members)  # keep batch order inside a stream row
        pos = np.concatenate([flat_pos[i] for i in members])
        out[r, :len(pos)] = pos
    return out


def identity_plan(attention_mask: jax.Array) -> jax.Array:
    """In-jit fallback plan: stream row ``i`` = batch row ``i``, padding slots -> sentinel. ``[b, l]``."""
    b, l = attention_mask.shape
    flat = jnp.arange(b * l, dtype=jnp.int32).reshape(b, l)
    return jnp.where(attention_mask.astype(bool), flat, b * l)


def gather(x: jax.Array, index: jax.Array, fill=0) -> jax.Array:
    """``x [b, l, ...]`` -> ``[r, R, ...]`` through ``index [r, R]``; sentinel slots get ``fill``."""
    b, l = x.shape[:2]
    flat = x.reshape((b * l,) + x.shape[2:])
    flat = jnp.concatenate([flat, jnp.full((1,) + x.shape[2:], fill, x.dtype)], axis=0)
    return flat[jnp.minimum(index, b * l)]


def scatter(stream: jax.Array, index: jax.Array, batch: int, length: int) -> jax.Array:
    """Inverse of :func:`gather`: ``[r, R, ...]`` -> ``[batch, length, ...]``, zeros where no token.

    Implemented as a gather through the inverse permutation (cheaper to differentiate than a
    scatter): ``inverse[p]`` is the stream slot of flat position ``p`` or the extra zero row.
    """
    r, R = index.shape
    tail = stream.shape[2:]
    slots = stream.reshape((r * R,) + tail)
    slots = jnp.concatenate([slots, jnp.zeros((1,) + tail, stream.dtype)], axis=0)
    inverse = jnp.full((batch * length,), r * R, jnp.int32)
    inverse = inverse.at[index.reshape(-1)].set(jnp.arange(r * R, dtype=jnp.int32), mode="drop")
    return slots[inverse].reshape((batch, length) + tail)


def stream_segments(index: jax.Array, batch: int, length: int, segment_ids: jax.Array | None = None) -> jax.Array:
    """Segment ids of the stream ``[r, R]``: one id (>= 1) per original row, 0 at empty slots.

    With packed input rows (``segment_ids [b, l]``, 0 = padding) each (row, segment) pair gets
    its own id, so packing inside a row survives unpadding.
    """
    valid = index < batch * length
    row = jnp.minimum(index, batch * length - 1) // length
    if segment_ids is None:
        return jnp.where(valid, row + 1, 0).astype(jnp.int32)
    seg = gather(segment_ids.astype(jnp.int32), index)
    return jnp.where(valid & (seg > 0), row * (length + 1) + seg, 0).astype(jnp.int32)


def efficiency(index: np.ndarray, batch: int, length: int) -> dict[str, float]:
    """Fill of a plan: real tokens over stream slots and over the padded batch's slots."""
    index = np.asarray(index)
    n = int((index < batch * length).sum())
    return {"tokens": n, "stream_slots": int(index.size), "padded_slots": batch * length,
            "stream_fill": n / max(index.size, 1), "padded_fill": n / max(batch * length, 1)}
