"""Parameter initialisers matching Hugging Face BERT (truncated-free normal with ``initializer_range``)."""

import flax.linen as nn

zeros_init = nn.initializers.zeros
ones_init = nn.initializers.ones


def dense_init(stddev: float):
    """Normal(0, stddev), as ``BertPreTrainedModel._init_weights`` does for Linear and Embedding."""
    return nn.initializers.normal(stddev=stddev)
