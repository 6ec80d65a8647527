"""Running an iterator one item ahead in a helper thread, so that its work overlaps the consumer's."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")
_POLL_S = 0.05


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """Yield what ``items`` yields, computing the next item in a thread while the caller uses this one.

    At most two items exist beyond the one the caller holds (one waiting, one being made): an iterator
    that reuses buffers needs three in rotation. Exceptions arrive in the caller's thread, in order;
    when the caller stops early the helper thread is stopped and joined.
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put((kind, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("end", None)
        except BaseException as exc:  # noqa: BLE001  handed to the consumer, raised there
            put("error", exc)

    worker = threading.Thread(target=produce, name="nncodec-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join()
