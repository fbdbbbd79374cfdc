"""Parameter paths: the one way a leaf of a param (or any) pytree is named as a string.

A path is the leaf's keys joined by ``'/'``: ``encoder/layer_3/mlp/wi/kernel``. Dict keys give
their key, sequence entries their index, dataclass / named-tuple fields their name (jax key
paths: ``DictKey.key``, ``SequenceKey.idx``, ``GetAttrKey.name``). Regex rules over these
strings drive optimizer labels, freezing, PEFT targets, conversion tables and error messages.

    path_str(key_path)       # one jax key path (from tree_flatten_with_path) -> "a/b/c"
    flat_paths(tree)         # {"a/b/c": leaf, ...} in jax's flattening order
    param_paths(tree)        # same structure as ``tree``, each leaf replaced by its path
    join_keys(("a", "b"))    # a flax ``traverse_util.flatten_dict`` key tuple -> "a/b"
    split_path("a/b/c")      # -> ("a", "b", "c"); parent_path("a/b/c") -> "a/b"
    flatten_mapping(tree)    # nested dicts only -> {"a/b/c": value}; other values (boxed
                             # ``nn.Partitioned`` leaves, lists) are kept whole as leaves
    unflatten_mapping(flat)  # the inverse: {"a/b/c": value} -> nested dicts
    dict_key_suffix(key_path)  # the trailing dict keys of a jax key path (the param path of
                               # an optimizer-state leaf such as ``opt_state.mu[...]``)

This module imports nothing from jaxbert, so models, peft, convert and train all use it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import jax

__all__ = ["SEP", "key_name", "path_str", "join_keys", "split_path", "parent_path", "flat_paths", "param_paths",
           "flatten_mapping", "unflatten_mapping", "dict_key_suffix"]

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


def split_path(path: str) -> tuple[str, ...]:
    """``'a/b/c'`` -> ``('a', 'b', 'c')`` (the inverse of :func:`join_keys` on string keys)."""
    return tuple(path.split(SEP))


def parent_path(path: str) -> str:
    """The path of the module holding a leaf: ``'a/b/kernel'`` -> ``'a/b'`` (``''`` at the root)."""
    return SEP.join(split_path(path)[:-1])


def flatten_mapping(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{path: value}`` of a tree of nested mappings, in insertion order.

    Only mappings are walked: any other value is a leaf, kept whole (unlike :func:`flat_paths`,
    which goes through every pytree node, a boxed ``nn.Partitioned`` leaf stays boxed).
    """
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}{SEP}{k}" if prefix else str(k), v)
        else:
            out[prefix] = node
    walk("", tree)
    return out


def unflatten_mapping(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_mapping`: ``{'a/b': x}`` -> ``{'a': {'b': x}}``."""
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = split_path(path)
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def dict_key_suffix(key_path: Sequence[Any]) -> tuple[str, ...]:
    """The dict keys at the end of a jax key path, up to the first non-dict entry from the right.

    For a leaf of an optimizer state (``ScaleByAdamState.mu['encoder']['layer_0'][...]``) these
    are the keys of the parameter it belongs to.
    """
    keys: list[str] = []
    for k in reversed(key_path):
        if not hasattr(k, "key"):
            break
        keys.append(str(k.key))
    return tuple(reversed(keys))
