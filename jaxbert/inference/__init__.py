"""Inference: sentence encoders over any registered architecture."""
