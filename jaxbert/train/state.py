"""Training state, created sharded from the start.

The state is a pytree (``step``, ``params``, ``opt_state``, ``rng``); ``rng`` holds raw
``uint32`` key data so it checkpoints like any array. :func:`create_sharded_state` derives
every leaf's sharding from ``jax.eval_shape`` + the params' logical axis names and then builds
the state with ``jax.jit(..., out_shardings=...)``: nothing is materialised unsharded.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbert.train import mesh as mesh_lib


@struct.dataclass
class TrainState:
    """``step`` int32 scalar; ``params`` plain dict; ``opt_state`` optax state; ``rng`` uint32 key data."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


@struct.dataclass
class StateShardings:
    """Shardings of a :class:`TrainState`, plus the params whose logical dims fell back to replication."""

    state: Any
    params: Any
    fallbacks: list = struct.field(pytree_node=False, default_factory=list)


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, rules,
                    sample_input: dict[str, np.ndarray]) -> StateShardings:
    """Shardings for the train state of ``model`` trained with ``tx`` on ``mesh`` under ``rules``."""
    boxed = jax.eval_shape(lambda r: model.init(r, **sample_input), jax.random.key(0))["params"]
    p_sh, fallbacks = mesh_lib.param_shardings(boxed, mesh, rules)
    params_abstract = nn.unbox(boxed)
    opt_abstract = jax.eval_shape(tx.init, params_abstract)
    o_sh = mesh_lib.tree_shardings_like(opt_abstract, p_sh, params_abstract, mesh)
    replicated = NamedSharding(mesh, P())
    st = TrainState(step=replicated, params=p_sh, opt_state=o_sh, rng=replicated)
    return StateShardings(state=st, params=p_sh, fallbacks=fallbacks)


def create_sharded_state(model: nn.Module, tx: optax.GradientTransformation, shardings: StateShardings,
                         seed: int, sample_input: dict[str, np.ndarray],
                         params: Any | None = None,
                         params_transform: Callable[[Any, jax.Array], Any] | None = None) -> TrainState:
    """Initialise (or take pretrained ``params``), place by ``shardings``, build optimizer state.

    ``params_transform(params, rng)`` runs on the initial params inside the jitted init (e.g.
    re-initialising the top layers); ``seed`` seeds init, dropout and everything downstream.
    """
    root = jax.random.key(seed)
    init_rng, train_rng = jax.random.split(root)

    def init_fn(init_rng, pretrained):
        p = nn.unbox(model.init(init_rng, **sample_input)["params"]) if pretrained is None else pretrained
        if params_transform is not None:
            p = params_transform(p, init_rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                          rng=jax.random.key_data(train_rng))

    if params is not None:
        params = jax.device_put(params, shardings.params)
        return jax.jit(init_fn, out_shardings=shardings.state)(init_rng, params)
    return jax.jit(lambda r: init_fn(r, None), out_shardings=shardings.state)(init_rng)


def abstract_state(state: TrainState) -> Any:
    """``jax.ShapeDtypeStruct`` tree (with shardings) of a state: the target for sharded restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, shardings: StateShardings,
                         sample_input: dict[str, np.ndarray]) -> TrainState:
    """The state's ``ShapeDtypeStruct`` tree carrying the target shardings (restore target)."""
    params = jax.eval_shape(lambda r: nn.unbox(model.init(r, **sample_input)["params"]), jax.random.key(0))
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                          opt_state=jax.eval_shape(tx.init, params),
                          rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings.state)
