"""Monarch Mixer BERT (Fu et al. 2023): the attention-free M2 encoder and its checkpoint format."""
