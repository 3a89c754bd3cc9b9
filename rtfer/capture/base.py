"""The :class:`Source` every capture kind is: an iterator of :class:`rtfer.types.Frame` fed by its own reader thread
through a bounded queue (:class:`Reader`), with the lifecycle (close, context manager, garbage collection); and the
pixel limit every kind applies before decoding (:func:`check_pixels`)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

from rtfer._queues import END, StopQueue
from rtfer.errors import InputError, one_line
from rtfer.types import Frame

log = logging.getLogger(__name__)

#: Bounded wait when joining the reader thread on close().
JOIN_TIMEOUT_S = 2.0


#: Images (and video frames) above this many pixels are refused before decoding: a 389 KB PNG can claim 20000 x
#: 20000 pixels and take 2.5 GB to decode. 120 megapixels keeps every camera photo (108 MP phones) and panoramas of
#: that size; ``$RTFER_MAX_IMAGE_PIXELS`` raises or lowers it (``0`` = no limit of ours; OpenCV still refuses more
#: than 2**30 pixels).
DEFAULT_MAX_IMAGE_PIXELS = 120_000_000
MAX_PIXELS_ENV = "RTFER_MAX_IMAGE_PIXELS"
OPENCV_MAX_PIXELS = 1 << 30  # OpenCV's imgcodecs refuse larger images (CV_IO_MAX_IMAGE_PIXELS)


def max_image_pixels() -> int:
    """The pixel limit in force (:data:`DEFAULT_MAX_IMAGE_PIXELS` unless ``$RTFER_MAX_IMAGE_PIXELS`` says; 0 = none)."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"${MAX_PIXELS_ENV} must be a number of pixels (e.g. 300e6; 0 = no limit), got {text!r}") \
            from None
    return max(0, int(value))


def check_pixels(width: int, height: int, what: str) -> None:
    """Raise :class:`InputError` when ``width x height`` is above :func:`max_image_pixels`."""
    check_pixel_count(int(width) * int(height), f"{width}x{height} pixels", what)


def check_pixel_count(pixels: int, dims: str, what: str) -> None:
    """Raise :class:`InputError` when ``pixels`` (described as ``dims``, e.g. "20000x20000 pixels") is above
    :func:`max_image_pixels`."""
    limit = max_image_pixels()
    if limit and pixels > limit:
        hint = f"to analyse it anyway set {MAX_PIXELS_ENV}={pixels}" if pixels <= OPENCV_MAX_PIXELS else \
            "no decoder here takes more than 2**30 pixels"
        raise InputError(f"{what} is {dims} ({pixels / 1e6:.1f} megapixels), above the limit of {limit / 1e6:g} "
                         f"megapixels (a decompression bomb or a damaged header?); {hint}")


_STDERR_LOCK = threading.Lock()
#: Lines written to stderr while a decoder runs that are not the decoder's: our own log lines and a progress bar
#: (another thread's, in the few milliseconds of the capture). Everything else there is the decoder's (libpng, libjpeg,
#: libtiff, OpenCV's log), kept out of the terminal (it reached stderr even under -q), logged at debug and named in
#: our one-line messages instead.
_NOT_DECODER = ("rtfer", "%|", "frame/s", "frames/s")


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what C libraries write to file descriptor 2 during the block (OpenCV's image codecs print libpng and
    libjpeg messages there, bypassing Python). Yields a list that holds the decoder's lines afterwards; anything
    else written meanwhile (another thread's log line) is passed on to the real stderr. Does nothing where fd 2
    cannot be redirected."""
    lines: list[str] = []
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield lines
            return
        try:
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield lines
                finally:
                    try:
                        sys.stderr.flush()
                    except (OSError, ValueError):
                        pass
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    text = tmp.read().decode("utf-8", "replace")
        finally:
            os.close(saved)
    other = []
    for line in text.splitlines():
        if line.strip():
            (other if any(mark in line for mark in _NOT_DECODER) else lines).append(line.strip())
    for line in lines:
        log.debug("decoder: %s", line)
    if other:
        try:
            os.write(2, ("\n".join(other) + "\n").encode("utf-8", "replace"))
        except OSError:
            pass


class _Failure:
    """An exception travelling from the reader thread to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Reader:
    """Shared state between a Source and its reader thread: a :class:`StopQueue` and the warnings.

    The thread's target closes over this object only (never over the Source), so a Source that its consumer drops
    without closing can still be garbage-collected; its ``__del__`` then stops the thread.
    """

    def __init__(self, prefetch: int, drop_frames: bool) -> None:
        self.drop_frames = drop_frames
        self.queue = StopQueue(1 if drop_frames else max(1, int(prefetch)), drop_oldest=drop_frames)
        self.stop = self.queue.stop
        self.warnings: list[str] = []
        self.thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def warn(self, message: str) -> None:
        """Record a warning (shown to the user at the end) and log it once."""
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("%s", message)

    def put(self, item: Any, *, is_frame: bool = True) -> bool:
        """Enqueue ``item``; returns False when asked to stop.

        In drop mode a frame replaces the queued (older) frame; the end marker and errors wait for room instead, so
        the newest frame is always delivered.
        """
        return self.queue.put(item, droppable=is_frame)

    def start(self, target: Callable[[Reader], None], name: str) -> None:
        self.stop.clear()

        def run() -> None:
            try:
                target(self)
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                self.put(_Failure(exc), is_frame=False)
            else:
                self.put(END, is_frame=False)

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def halt(self) -> bool:
        """Stop the thread and wait a bounded time; True when it has exited."""
        self.stop.set()
        thread = self.thread
        if thread is None:
            return True
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while thread.is_alive() and time.monotonic() < deadline:
            self.queue.drain()
            thread.join(timeout=0.05)
        self.queue.drain()
        if thread.is_alive():
            log.warning("capture thread %s did not stop within %.1f s; leaving it (daemon)", thread.name,
                        JOIN_TIMEOUT_S)
            return False
        return True


class Source:
    """An opened input: a context manager and an iterator of BGR :class:`Frame` objects.

    Attributes: ``kind`` ("video"|"image"|"folder"|"camera"|"stream"), ``name`` (the CSV ``source`` column for
    single-file sources), ``fps`` (float or None), ``frame_count`` (int or None, an estimate for progress bars),
    ``width``, ``height``, ``duration_s`` (None when unknown), ``warnings`` and ``dropped``.
    """

    kind: str = ""

    def __init__(self, spec: Any, *, prefetch: int = 8, drop_frames: bool = False) -> None:
        self.spec = spec
        self.name: str = str(spec)
        self.fps: float | None = None
        self.frame_count: int | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.duration_s: float | None = None
        self.prefetch = prefetch
        self.drop_frames = drop_frames
        self._reader = Reader(prefetch, drop_frames)
        self._closed = False
        self._finished = False

    @property
    def live(self) -> bool:
        """A camera or a live stream: frames come at their own pace and are dropped rather than queued."""
        return self.kind in ("camera", "stream")

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._reader.start(self._produce_fn(), name=f"rtfer-capture-{self.kind}")

    def _produce_fn(self) -> Callable[[Reader], None]:
        raise NotImplementedError

    def _release(self) -> None:
        """Free decoder/camera handles once the thread has exited."""

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before the consumer took them (``drop_frames=True``)."""
        return self._reader.dropped

    @property
    def warnings(self) -> list[str]:
        """Non-fatal problems met while reading (truncation, unreadable images), each logged once."""
        return self._reader.warnings

    def close(self) -> None:
        """Stop the reader thread (bounded wait) and release the input. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._reader.halt():
            self._release()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._closed or self._finished:
            raise StopIteration
        item = self._reader.queue.get(self._reader.thread)
        if item is END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            if isinstance(item.exc, InputError):
                raise item.exc
            raise InputError(f"cannot read {self.name}: {one_line(item.exc)}") from item.exc
        return item

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, name={self.name!r}, fps={self.fps}, "
                f"frame_count={self.frame_count}, size={self.width}x{self.height})")
