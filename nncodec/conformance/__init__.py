"""Conformance: vectors, their generator, the runner, and stream-forging helpers."""
