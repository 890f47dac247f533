"""Correct and planted-bug twins on real JAX libraries (see _registry.py)."""
