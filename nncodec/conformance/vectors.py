"""Manifest of conformance vectors: reading it, hashing decoded tensors, checking one decode against it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["Vector", "load_manifest", "tensor_digest", "MANIFEST", "default_vectors_dir"]

MANIFEST = "manifest.json"


def default_vectors_dir() -> Path:
    """``conformance_vectors/`` of a source checkout or editable install."""
    here = Path(__file__).resolve().parents[2] / "conformance_vectors"
    if not (here / MANIFEST).is_file():
        raise ConfigError("no bundled conformance vectors found next to the package; pass the vectors folder")
    return here


def tensor_digest(array: np.ndarray) -> str:
    """sha256 of the tensor's little-endian bytes in C order (bfloat16 as its uint16 bit patterns)."""
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        a = a.astype(a.dtype.newbyteorder("<"))
    return hashlib.sha256(a.tobytes()).hexdigest()


@dataclass
class Vector:
    name: str
    format_version: str
    file: str
    sha256: str
    exercises: str
    tensors: list[dict[str, Any]] | None = None   #: expected [{name, dtype, shape, sha256}] in stream order
    error: str | None = None                       #: expected error class for an invalid vector
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "format_version": self.format_version, "file": self.file,
                             "sha256": self.sha256, "exercises": self.exercises}
        d["expect"] = {"tensors": self.tensors} if self.error is None else {"error": self.error}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vector":
        expect = d.get("expect", {})
        extra = {k: v for k, v in d.items() if k not in ("name", "format_version", "file", "sha256", "exercises",
                                                          "expect")}
        return cls(d["name"], d["format_version"], d["file"], d["sha256"], d.get("exercises", ""),
                   expect.get("tensors"), expect.get("error"), extra)


def load_manifest(folder: Path) -> list[Vector]:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read conformance manifest {path}: {exc}") from None
    if data.get("format") != "nncodec-conformance":
        raise ConfigError(f"{path} is not an nncodec conformance manifest")
    return [Vector.from_dict(v) for v in data["vectors"]]
