"""Parsing QKeras-style quantizer spec strings safely (``ast``, never ``eval``).

``"quantized_bits(8,0,1)"``, ``"ternary(alpha='auto')"``, ``"binary"`` -> ``("quantized_bits", (8, 0, 1), {})``.
Only literal arguments (numbers, strings, booleans, None) are accepted.
"""

from __future__ import annotations

import ast
from typing import Any

from ..errors import ConfigError

__all__ = ["parse_spec"]


def _literal(node: ast.AST, spec: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ConfigError(f"quantizer spec {spec!r}: arguments must be literals") from None


def parse_spec(spec: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """Split a spec string into ``(name, args, kwargs)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"quantizer spec must be a non-empty string, got {spec!r}")
    try:
        tree = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        raise ConfigError(f"quantizer spec {spec!r} is not of the form name(args)") from None
    if isinstance(tree, ast.Name):
        return tree.id, (), {}
    if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name):
        args = tuple(_literal(a, spec) for a in tree.args)
        kwargs = {}
        for kw in tree.keywords:
            if kw.arg is None:
                raise ConfigError(f"quantizer spec {spec!r}: ** arguments are not allowed")
            kwargs[kw.arg] = _literal(kw.value, spec)
        return tree.func.id, args, kwargs
    raise ConfigError(f"quantizer spec {spec!r} is not of the form name(args)")
