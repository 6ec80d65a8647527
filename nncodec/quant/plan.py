"""Per-layer quantization plans: plain JSON keyed by module name (exact name, glob pattern, default).

```json
{"format": "nncodec.plan", "version": 1,
 "layers": {"conv2d_0_m": {"kernel": "quantized_bits(4,0,1)", "bias": "quantized_bits(8,0,1)"},
            "act*": {"activation": "quantized_relu(4)"}},
 "default": {"kernel": "quantized_bits(8,0,1)"},
 "widths": {"conv2d_1_m": 0.75}}
```

An entry's ``input`` (Linear layers only) requantizes the layer's input with one step per input channel
folded into its weights (:mod:`nncodec.quant.input_steps`): ``{"input": "quantized_bits(8,0,1)"}``.

Resolution for a module: its exact name, else the first pattern (in file order) that matches, else
``default``. ``widths`` (output-width multipliers) is used by the search and pruning, not here.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import get_quantizer

__all__ = ["Plan", "LayerPlan"]

_KEYS = ("kernel", "bias", "activation", "input")
_TOP_KEYS = ("format", "version", "layers", "default", "widths")


@dataclass(frozen=True)
class LayerPlan:
    kernel: str | None = None
    bias: str | None = None
    activation: str | None = None
    #: the layer's input requantized with per-input-channel steps folded into its weights (Linear only)
    input: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "LayerPlan":
        if not isinstance(d, dict) or set(d) - set(_KEYS):
            raise ConfigError(f"plan entry {where!r} must be an object with keys from {_KEYS}, got {d!r}")
        for k, v in d.items():
            if v is not None:
                get_quantizer(v)  # validates the spec now, with its location in the message below
        return cls(**{k: d.get(k) for k in _KEYS})

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in _KEYS if getattr(self, k) is not None}


@dataclass
class Plan:
    layers: dict[str, LayerPlan] = field(default_factory=dict)
    default: LayerPlan | None = None
    widths: dict[str, float] = field(default_factory=dict)

    def resolve(self, name: str) -> LayerPlan | None:
        if name in self.layers:
            return self.layers[name]
        for pattern, lp in self.layers.items():
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
                return lp
        return self.default

    def check_names(self, names: "list[str] | set[str]") -> None:
        """Raise :class:`ConfigError` naming the first ``layers`` / ``widths`` key (exact name or pattern) that
        matches none of ``names`` (the model's module names): such a plan would silently quantize nothing."""
        names = list(names)
        known = set(names)
        for section, keys in (("layers", self.layers), ("widths", self.widths)):
            for key in keys:
                if key in known:
                    continue
                if any(ch in key for ch in "*?[") and any(fnmatch.fnmatchcase(n, key) for n in names):
                    continue
                close = difflib.get_close_matches(key, names, n=3)
                hint = f"; close names: {', '.join(close)}" if close else f"; module names: {', '.join(names[:8])}" + \
                    (" ..." if len(names) > 8 else "")
                raise ConfigError(f"plan {section} key {key!r} matches no module of the model{hint}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": "nncodec.plan", "version": 1,
                               "layers": {k: v.to_dict() for k, v in self.layers.items()}}
        if self.default is not None:
            out["default"] = self.default.to_dict()
        if self.widths:
            out["widths"] = dict(self.widths)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        if not isinstance(d, dict) or d.get("format", "nncodec.plan") != "nncodec.plan":
            raise ConfigError("not an nncodec plan (expected format 'nncodec.plan')")
        unknown = sorted(set(d) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(f"plan has unknown top-level key(s) {unknown}; a plan holds {list(_TOP_KEYS)} "
                              "(layer entries go under 'layers')")
        if d.get("version", 1) != 1:
            raise ConfigError(f"plan version {d.get('version')} is not supported (this nncodec reads version 1)")
        layers = d.get("layers", {})
        if not isinstance(layers, dict):
            raise ConfigError("plan 'layers' must be an object")
        widths = d.get("widths", {})
        if not isinstance(widths, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in widths.values()):
            raise ConfigError("plan 'widths' must map layer names to positive numbers")
        default = d.get("default")
        return cls({k: LayerPlan.from_dict(v, k) for k, v in layers.items()},
                   LayerPlan.from_dict(default, "default") if default is not None else None,
                   {k: float(v) for k, v in widths.items()})

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"plan is not valid JSON: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def coerce(cls, plan: "Plan | dict[str, Any] | str | Path | None") -> "Plan":
        if plan is None:
            return cls()
        if isinstance(plan, Plan):
            return plan
        if isinstance(plan, dict):
            return cls.from_dict(plan)
        return cls.load(plan)
