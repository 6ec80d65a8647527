"""Atomic file writes: a temporary file in the destination folder, fsync, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic", "atomic_file"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file (seekable) that becomes ``path`` when the block ends without an error; on an error it
    is removed and ``path`` keeps its old content. An :class:`OSError` names ``path`` (not the temporary
    file beside it)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise


def write_atomic(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> Path:
    """Write ``chunks`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)
    return Path(path)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same kind of error, about ``path``."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))
