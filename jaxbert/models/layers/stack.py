"""The stack of blocks of a backbone: ``layer_0 ... layer_{L-1}``, rematerialised on request.

Every backbone (encoder, M2, LLM decoder) builds its blocks the same way, so the block names
(and with them every per-layer regex: freezing, layer-wise learning-rate decay, PEFT targets)
and the ``config.remat`` switch mean the same thing in each.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn


def block_stack(block: type[nn.Module], config: Any, remat_static_argnums: tuple[int, ...]) -> list[nn.Module]:
    """``config.num_hidden_layers`` modules ``block(config, i, name=f"layer_{i}")``; call in a ``setup``.

    With ``config.remat`` each block is wrapped in ``nn.remat`` (activations recomputed in the
    backward pass); ``remat_static_argnums`` are the positions of the block call's non-array
    arguments (flags such as ``deterministic``), counting ``self`` as 0.
    """
    cls = nn.remat(block, static_argnums=remat_static_argnums) if config.remat else block
    return [cls(config, i, name=f"layer_{i}") for i in range(config.num_hidden_layers)]
