"""Compatibility shim for tools that still call setup.py; configuration is in pyproject.toml."""
from setuptools import setup

setup()
