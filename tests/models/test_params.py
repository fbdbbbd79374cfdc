"""The one param-path spelling (jaxbert.models.params): jax key paths, flax key tuples and nested
dicts all give the same ``a/b/c`` strings; boxed leaves survive the dict flattening; the trailing
dict keys of an optimizer-state leaf are its parameter's path."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxbert.models.params import (dict_key_suffix, flat_paths, flatten_mapping, join_keys, param_paths,
                                   parent_path, path_str, split_path, unflatten_mapping)

TREE = {"encoder": {"layer_0": {"mlp": {"wi": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}}},
                    "embeddings": {"word_embeddings": {"embedding": np.ones((5, 2))}}},
        "classifier": {"out": {"kernel": np.ones((2, 4))}}}


def test_every_spelling_gives_the_same_paths():
    from_jax = list(flat_paths(TREE))
    from_flax = sorted(join_keys(k) for k in traverse_util.flatten_dict(TREE))
    from_dicts = list(flatten_mapping(TREE))
    assert sorted(from_jax) == from_flax == sorted(from_dicts)
    assert "encoder/layer_0/mlp/wi/kernel" in from_dicts
    assert param_paths(TREE)["classifier"]["out"]["kernel"] == "classifier/out/kernel"
    # sequence entries and attribute names are spelled by index / name
    kp = jax.tree_util.tree_flatten_with_path({"a": [np.zeros(1), {"b": np.zeros(1)}]})[0][1][0]
    assert path_str(kp) == "a/1/b"
    assert split_path("a/b/c") == ("a", "b", "c") and parent_path("a/b/c") == "a/b" and parent_path("a") == ""


def test_flatten_mapping_keeps_boxed_leaves_and_round_trips():
    boxed = {"layer_0": {"kernel": nn.Partitioned(jnp.ones((2, 2)), names=("embed", "mlp"))}}
    flat = flatten_mapping(boxed)
    assert list(flat) == ["layer_0/kernel"] and isinstance(flat["layer_0/kernel"], nn.Partitioned)
    again = unflatten_mapping(flatten_mapping(TREE))
    assert jax.tree.structure(again) == jax.tree.structure(TREE)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(TREE)):
        np.testing.assert_array_equal(a, b)


def test_dict_key_suffix_of_optimizer_state_leaves_is_the_param_path():
    params = {"encoder": {"layer_0": {"kernel": jnp.ones((2, 2))}}, "head": {"bias": jnp.zeros(2)}}
    state = optax.adam(1e-3).init(params)
    suffixes = {join_keys(dict_key_suffix(kp)) for kp, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
                if getattr(leaf, "ndim", 0) > 0}
    assert suffixes == {"encoder/layer_0/kernel", "head/bias"}
