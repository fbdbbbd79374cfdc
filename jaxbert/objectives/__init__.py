"""Losses: each is a pure function of model outputs and a batch, returning (loss, metric sums)."""
