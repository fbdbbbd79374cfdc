"""Transforms of trained models as functions on params (model soup; quantization and growth later)."""
