"""One bounded queue with a stop event, shared by the capture reader thread and the pipeline's front thread.

A producer thread puts with back-pressure and gives up once the stop event is set; the consumer gets until the
producer is gone or the run is stopped. In ``drop_oldest`` mode (latest-frame-wins for live sources) a droppable
item replaces the queued one instead of waiting, and each replaced item counts in :attr:`StopQueue.dropped`.
"""
from __future__ import annotations

import queue
import threading
from typing import Any

#: Put by a producer after its last item, and returned by :meth:`StopQueue.get` once nothing more will come.
END = object()
_POLL_S = 0.05


class StopQueue:
    """A bounded queue between one producer thread and one consumer, with a stop event both sides honour."""

    def __init__(self, maxsize: int, stop: threading.Event | None = None, *, drop_oldest: bool = False) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(maxsize)))
        self.stop = stop if stop is not None else threading.Event()
        self.drop_oldest = drop_oldest
        self.dropped = 0

    def put(self, item: Any, *, droppable: bool = True) -> bool:
        """Enqueue ``item``, waiting for room; False when the stop event is set first.

        With ``drop_oldest``, a ``droppable`` item replaces the oldest queued one rather than waiting; markers and
        errors (``droppable=False``) always wait, so the newest frame before them is still delivered.
        """
        drop = self.drop_oldest and droppable
        while not self.stop.is_set():
            try:
                if drop:
                    self._q.put_nowait(item)
                else:
                    self._q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if drop:
                    try:
                        self._q.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        return False

    def get(self, producer: threading.Thread | None = None) -> Any:
        """The next item; :data:`END` once the stop event is set or ``producer`` has exited and nothing is left."""
        while True:
            try:
                return self._q.get(timeout=_POLL_S)
            except queue.Empty:
                gone = producer is not None and not producer.is_alive()
                if self.stop.is_set() or gone:
                    try:
                        return self._q.get_nowait()
                    except queue.Empty:
                        return END

    def get_ready(self, timeout: float = 0.0) -> Any:
        """An item that is queued now or within ``timeout`` seconds; raises :class:`queue.Empty` otherwise."""
        if timeout <= 0:
            return self._q.get_nowait()
        return self._q.get(timeout=timeout)

    def drain(self) -> None:
        """Discard everything queued (unblocks a producer waiting for room)."""
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass

    def empty(self) -> bool:
        return self._q.empty()


__all__ = ["END", "StopQueue"]
