"""Transforms of trained models as functions on params (``params -> params``).

Today: model soups (:mod:`jaxbert.compress.soup`, uniform / weighted / greedy averages of
fine-tuned checkpoints; documented in docs/llm_embedders.md). The home of the next issues'
transforms of a trained model (quantization, binarization, growth, token pruning), each a
function on ``(config, params)`` that the model code does not know about.
"""
