"""Parameter paths: the one way a leaf of a param (or any) pytree is named as a string.

A path is the leaf's keys joined by ``'/'``: ``encoder/layer_3/mlp/wi/kernel``. Dict keys give
their key, sequence entries their index, dataclass / named-tuple fields their name (jax key
paths: ``DictKey.key``, ``SequenceKey.idx``, ``GetAttrKey.name``). Regex rules over these
strings drive optimizer labels, freezing, PEFT targets, conversion tables and error messages.

    path_str(key_path)       # one jax key path (from tree_flatten_with_path) -> "a/b/c"
    flat_paths(tree)         # {"a/b/c": leaf, ...} in jax's flattening order
    param_paths(tree)        # same structure as ``tree``, each leaf replaced by its path
    join_keys(("a", "b"))    # a flax ``traverse_util.flatten_dict`` key tuple -> "a/b"

This module imports nothing from jaxbert, so models, peft, convert and train all use it.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax

__all__ = ["SEP", "key_name", "path_str", "join_keys", "flat_paths", "param_paths"]

#: Separator of path components.
SEP = "/"


def key_name(k: Any) -> str:
    """One entry of a jax key path as a string (dict key, sequence index or attribute name)."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(key_path: Sequence[Any]) -> str:
    """A jax key path (from ``tree_flatten_with_path``) as ``'a/b/c'`` (``''`` for the root)."""
    return SEP.join(key_name(k) for k in key_path)


def join_keys(keys: Iterable[Any]) -> str:
    """A ``flax.traverse_util.flatten_dict`` key tuple as ``'a/b/c'``."""
    return SEP.join(str(k) for k in keys)


def flat_paths(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` of every leaf of ``tree``, in jax's flattening order."""
    return {path_str(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def param_paths(tree: Any) -> Any:
    """Same structure as ``tree``, each leaf replaced by its path string."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: path_str(kp), tree)
