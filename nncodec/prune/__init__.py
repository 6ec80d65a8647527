"""Structured (filters / units) and unstructured (masks) pruning."""
