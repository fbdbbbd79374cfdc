"""M2-BERT presets (80M / 110M, the LoCo 32k shape, a tiny test shape) and their config factory;
looked up through :func:`jaxbert.models.registry.get`."""

from __future__ import annotations

from typing import Any, Callable

from jaxbert.models.m2.model import M2Config


def m2_config(**kw: Any) -> M2Config:
    """M2-BERT-base 80M (``monarch-mixer-pretrain-786dim-80m-parameters.yaml``): d=768, 12 layers,
    Monarch GLU with 4 blocks, bidirectional Hyena filters (order 128, emb_dim 5, w=10) with the
    residual long convolution, learned positions for 128 tokens."""
    return M2Config(**kw)


PRESETS: dict[str, Callable[[], M2Config]] = {
    "m2-bert-80m": lambda: m2_config(),
    # ``monarch-mixer-pretrain-960dim-parameter-matched.yaml``: the "110M" model is matched to
    # BERT-base in encoder-layer parameters (85.2M vs 85.1M); its total is larger (wider embeddings).
    "m2-bert-110m": lambda: m2_config(hidden_size=960, intermediate_size=3840),
    # LoCo long-context retrieval model shape (``m2-bert-80M-32k-retrieval.yaml``): same body, 32k positions.
    "m2-bert-80m-32k": lambda: m2_config(max_position_embeddings=32768),
    # Small shape for tests and CPU experiments.
    "m2-bert-tiny": lambda: m2_config(hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                                      hyena_filter_order=16, max_position_embeddings=512, long_conv_l_max=128),
}
