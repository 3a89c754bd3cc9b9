"""Capture stage: turn a file, folder, webcam or stream into an iterator of :class:`rtfer.types.Frame`.

Decoding runs on its own daemon thread into a bounded queue so that the consumer (detection, inference) overlaps
with decoding. Live sources can use ``drop_frames=True``: the queue then holds only the newest frame
(latest-frame-wins) and every frame that is replaced before it is consumed counts in ``Source.dropped``.

Video timestamps come from the container (``frame.time`` = pts * time_base, relative to the stream start), so
variable-frame-rate files get the right times. Webcam times come from a monotonic clock.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from rtfer._queues import END, StopQueue
from rtfer.errors import InputError, one_line, redact_url  # redact_url: re-exported for callers of capture
from rtfer.types import Frame

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif", ".pgm", ".ppm"})
#: Common video file extensions (for discovering videos in folders; any file FFmpeg decodes is accepted as input).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                              ".wmv", ".flv", ".3gp", ".ogv", ".mxf", ".vob", ".gif"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://", "rtp://")
#: A camera whose reads keep failing for this many seconds is reported as stopped.
CAMERA_STALL_S = 2.0
#: Bounded wait when joining the reader thread on close().
JOIN_TIMEOUT_S = 2.0
#: Seconds a stream may take to open or to deliver a packet before it is reported unreachable.
STREAM_TIMEOUT_S = 10.0

class _Failure:
    """An exception travelling from the reader thread to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Reader:
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

    def start(self, target: Callable[[_Reader], None], name: str) -> None:
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
        self._reader = _Reader(prefetch, drop_frames)
        self._closed = False
        self._finished = False

    @property
    def live(self) -> bool:
        """A camera or a live stream: frames come at their own pace and are dropped rather than queued."""
        return self.kind in ("camera", "stream")

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._reader.start(self._produce_fn(), name=f"rtfer-capture-{self.kind}")

    def _produce_fn(self) -> Callable[[_Reader], None]:
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


# -- images and folders --------------------------------------------------------------------------------------------
def _read_image(path: Path) -> np.ndarray | None:
    """Decode an image file to BGR uint8 (None when it is not an image). Handles non-ASCII paths."""
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        return None
    return np.ascontiguousarray(image)


class ImageSource(Source):
    """A single image: one frame, index 0, time 0."""

    kind = "image"

    def __init__(self, path: Path, image: np.ndarray, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.name = path.name
        self._image = image
        self.frame_count = 1
        self.height, self.width = image.shape[:2]
        self._start()

    def _produce_fn(self) -> Callable[[_Reader], None]:
        image, name = self._image, self.name

        def produce(reader: _Reader) -> None:
            reader.put(Frame(0, 0.0, image, name))

        return produce


def _natural_key(path: Path) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


class FolderSource(Source):
    """Every image in a folder (not recursive), in natural name order.

    Each Frame has ``index`` 0, ``time_s`` 0.0 and ``source`` = the image's file name (the CSV schema for folders).
    Files that do not decode are skipped with a warning.
    """

    kind = "folder"

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.name = path.name
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                       key=_natural_key)
        if not files:
            raise InputError(f"folder {path} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.files = files
        self.frame_count = len(files)
        first = _read_image(files[0])
        if first is not None:
            self.height, self.width = first.shape[:2]
        self._start()

    def _produce_fn(self) -> Callable[[_Reader], None]:
        files, warn = list(self.files), self._reader.warn

        def produce(reader: _Reader) -> None:
            for path in files:
                if reader.stop.is_set():
                    return
                image = _read_image(path)
                if image is None:
                    warn(f"skipped {path.name}: not a readable image")
                    continue
                if not reader.put(Frame(0, 0.0, image, path.name)):
                    return

        return produce


# -- videos and streams (PyAV) -------------------------------------------------------------------------------------
def upright(frame: Any) -> np.ndarray:
    """A decoded PyAV frame as BGR uint8, turned as players show it: phones store portrait clips sideways with a
    display-matrix rotation (``frame.rotation``, degrees counter-clockwise), which FFmpeg's players apply."""
    image = frame.to_ndarray(format="bgr24")
    rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if rotation == 0:
        return image
    import cv2

    turn = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}.get(rotation)
    return np.ascontiguousarray(cv2.rotate(image, turn)) if turn is not None else image



def _video_stream(container: Any, label: str) -> Any:
    if not container.streams.video:
        container.close()
        raise InputError(f"{label} has no video stream")
    return container.streams.video[0]


class VideoSource(Source):
    """A video file decoded with PyAV; times from the container's timestamps (VFR-safe)."""

    kind = "video"

    def __init__(self, path: Path, container: Any, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.name = path.name
        self._container = container
        stream = _video_stream(container, f"{path}")
        self._stream = stream
        tb = stream.time_base or Fraction(1, 1)
        self._time_base = tb
        self._start_time = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else None
        ctx = stream.codec_context
        self.width, self.height = int(ctx.width or 0) or None, int(ctx.height or 0) or None
        if stream.duration is not None:
            self.duration_s = float(stream.duration * tb)
        elif container.duration is not None:
            self.duration_s = container.duration / 1_000_000
        if stream.frames:
            self.frame_count = int(stream.frames)
        elif self.duration_s and self.fps:
            self.frame_count = int(round(self.duration_s * self.fps))
        self._next_index = 0
        self._skip_until: float | None = None
        self._start()

    def _produce_fn(self) -> Callable[[_Reader], None]:
        container, stream, name = self._container, self._stream, self.name
        start, fps, expected = self._start_time, self.fps, self.frame_count
        first_index, skip_until, warn = self._next_index, self._skip_until, self._reader.warn
        label, source = self.name, weakref.ref(self)  # no strong reference: a dropped source must still close

        def produce(reader: _Reader) -> None:
            index = first_index
            last_t: float | None = None
            try:
                for frame in container.decode(stream):
                    if reader.stop.is_set():
                        return
                    if frame.time is not None:
                        t = float(frame.time) - start
                    elif last_t is not None:
                        t = last_t + (1.0 / fps if fps else 0.0)
                    else:
                        t = 0.0
                    if skip_until is not None and t < skip_until - 1e-6:
                        continue
                    last_t = t
                    image = upright(frame)
                    owner = source() if index == first_index else None
                    if owner is not None:
                        owner.height, owner.width = image.shape[:2]  # as displayed (rotation applied)
                    del owner
                    if not reader.put(Frame(index, t, image, name)):
                        return
                    index += 1
            except Exception as exc:  # noqa: BLE001 - damaged data ends the video with a warning
                warn(f"{label}: decoding stopped after {index} frames ({one_line(exc)}); the file may be truncated")
                return
            if first_index == 0 and skip_until is None and expected and index < 0.9 * expected:
                warn(f"{label}: only {index} of {expected} frames decoded; the file may be truncated")

        return produce

    def seek(self, time_s: float) -> None:
        """Restart decoding at the first frame whose time is >= ``time_s`` (seconds from the start).

        After a seek, ``Frame.index`` continues from ``round(time_s * fps)`` (an estimate for VFR files).
        """
        if self._closed:
            raise InputError(f"{self.name} is closed")
        if not self._reader.halt():
            raise InputError(f"cannot seek {self.name}: the decoder did not stop")
        time_s = max(0.0, float(time_s))
        target = int((time_s + self._start_time) / self._time_base)
        self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        self._skip_until = time_s
        self._next_index = int(round(time_s * self.fps)) if self.fps else 0
        self._finished = False
        self._start()

    def _release(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001
            pass


class StreamSource(Source):
    """A network stream (rtsp, http, udp...) decoded with PyAV. Times from the stream, relative to its first frame."""

    kind = "stream"

    def __init__(self, url: str, container: Any, **kwargs: Any) -> None:
        super().__init__(redact_url(url), **kwargs)
        self.name = redact_url(url)  # CSV source cells, messages: never the credentials
        self._container = container
        stream = _video_stream(container, self.name)
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.duration_s = recorded_duration(url, container)
        if self.duration_s is not None:  # a recorded file served over http(s): every frame, with progress
            self.kind = "remote_video"
            self.frame_count = int(round(self.duration_s * self.fps)) if self.fps else None
        ctx = stream.codec_context
        self.width, self.height = int(ctx.width or 0) or None, int(ctx.height or 0) or None
        self._start()

    def _produce_fn(self) -> Callable[[_Reader], None]:
        container, stream, name, warn = self._container, self._stream, self.name, self._reader.warn

        def produce(reader: _Reader) -> None:
            index = 0
            first: float | None = None
            clock0 = time.monotonic()
            try:
                for frame in container.decode(stream):
                    if reader.stop.is_set():
                        return
                    if frame.time is not None:
                        first = float(frame.time) if first is None else first
                        t = float(frame.time) - first
                    else:
                        t = time.monotonic() - clock0
                    if not reader.put(Frame(index, t, upright(frame), name)):
                        return
                    index += 1
            except Exception as exc:  # noqa: BLE001
                warn(f"{name}: stream stopped after {index} frames ({one_line(exc)})")

        return produce

    def _release(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001
            pass


def recorded_duration(url: str, container: Any) -> float | None:
    """The duration in seconds of an http(s) URL that serves a recorded file (the container knows its length), else
    None: a live stream (rtsp, udp, HLS live...) has no known duration."""
    if not url.lower().startswith(("http://", "https://")):
        return None
    duration = getattr(container, "duration", None)  # AV_TIME_BASE units (microseconds)
    return float(duration) / 1e6 if duration and duration > 0 else None


# -- webcams -------------------------------------------------------------------------------------------------------
class CameraSource(Source):
    """A webcam read with ``cv2.VideoCapture(index)``; times from a monotonic clock since opening."""

    kind = "camera"

    def __init__(self, index: int, **kwargs: Any) -> None:
        import cv2

        super().__init__(index, **kwargs)
        self.index = index
        self.name = f"camera{index}"
        cap = _quiet_opencv(cv2.VideoCapture, index)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise InputError(f"camera {index} cannot be opened (not connected, busy, or no permission)")
        self._t0 = time.monotonic()
        ok, image = cap.read()
        if not ok or image is None:
            cap.release()
            raise InputError(f"camera {index} opened but delivered no frame")
        self._cap = cap
        self._first = (time.monotonic() - self._t0, image)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if fps > 0 else None
        self.height, self.width = image.shape[:2]
        self._start()

    def _produce_fn(self) -> Callable[[_Reader], None]:
        cap, t0, first, name, cam = self._cap, self._t0, self._first, self.name, self.index
        self._first = None

        def produce(reader: _Reader) -> None:
            try:
                t, image = first
                if not reader.put(Frame(0, t, _bgr(image), name)):
                    return
                index = 1
                failing_since: float | None = None
                while not reader.stop.is_set():
                    ok, image = cap.read()
                    now = time.monotonic()
                    if not ok or image is None:
                        failing_since = failing_since or now
                        if now - failing_since >= CAMERA_STALL_S:
                            raise InputError(f"camera {cam} stopped delivering frames after {index} frames "
                                             f"(no frame for {CAMERA_STALL_S:.1f} s)")
                        time.sleep(0.01)
                        continue
                    failing_since = None
                    if not reader.put(Frame(index, now - t0, _bgr(image), name)):
                        return
                    index += 1
            finally:
                cap.release()

        return produce


def is_live_spec(spec: Any) -> bool:
    """True for a webcam index (``0``, ``"0"``) or a stream URL: sources that must drop frames, not lag."""
    if isinstance(spec, bool):
        return False
    if isinstance(spec, int):
        return True
    text = str(spec).strip()
    if text.isdigit() and not Path(text).exists():
        return True
    return text.lower().startswith(STREAM_SCHEMES)


def _quiet_opencv(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` with OpenCV's own logging silenced: probing a missing camera makes it print multi-line warnings
    and errors to stderr, and our one-line InputError says it better."""
    import cv2

    log_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if log_api is None:
        return fn(*args)
    previous = log_api.getLogLevel()
    log_api.setLogLevel(log_api.LOG_LEVEL_SILENT)
    try:
        return fn(*args)
    finally:
        log_api.setLogLevel(previous)


def _bgr(image: np.ndarray) -> np.ndarray:
    """Cameras may hand back grey or BGRA images; the pipeline wants HxWx3 uint8."""
    import cv2

    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image)
    return image


# -- entry point ---------------------------------------------------------------------------------------------------
def open_source(spec: str | int | os.PathLike, *, prefetch: int = 8, drop_frames: bool | None = False) -> Source:
    """Open a video file, image, folder of images, webcam index (``0`` or ``"0"``) or stream URL.

    ``drop_frames=None`` decides by the source: cameras and live streams drop frames (latest frame wins), files,
    including a recorded file served over http(s), deliver every frame. Raises :class:`InputError` with a one-line
    message when the input cannot be read.
    """
    if isinstance(spec, bool):
        raise InputError(f"not an input: {spec!r}")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit() and not Path(spec).exists()):
        return CameraSource(int(spec), prefetch=prefetch, drop_frames=True if drop_frames is None else drop_frames)
    text = os.fspath(spec)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.lower().startswith(STREAM_SCHEMES):
        import av

        try:
            container = av.open(text, timeout=STREAM_TIMEOUT_S,
                                options={"rtsp_transport": "tcp"} if text.lower().startswith("rtsp") else None)
        except Exception as exc:  # noqa: BLE001 - any open failure is an input problem
            raise InputError(f"cannot open stream {redact_url(text)}: {one_line(exc)}") from None
        if drop_frames is None:  # a recorded file over http(s) (known duration) delivers every frame
            drop_frames = recorded_duration(text, container) is None
        return StreamSource(text, container, prefetch=prefetch, drop_frames=drop_frames)
    return _open_path(text, prefetch, bool(drop_frames))


def _open_path(text: str, prefetch: int, drop_frames: bool) -> Source:
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return FolderSource(path, prefetch=prefetch, drop_frames=drop_frames)
    if not path.is_file():
        raise InputError(f"not a regular file: {path}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if size == 0:
        raise InputError(f"input is empty (0 bytes): {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        image = _read_image(path)
        if image is None:
            raise InputError(f"cannot decode image {path}")
        return ImageSource(path, image, prefetch=prefetch, drop_frames=drop_frames)
    container = _open_video(path)
    if container is None:
        image = _read_image(path)  # an image with an unusual extension
        if image is not None:
            return ImageSource(path, image, prefetch=prefetch, drop_frames=drop_frames)
        raise InputError(f"cannot read {path}: not a video or image file FFmpeg can decode (damaged or truncated?)")
    return VideoSource(path, container, prefetch=prefetch, drop_frames=drop_frames)


#: FFmpeg demuxers that accept almost any bytes (the "tty" demuxer renders text files as ANSI art).
_REJECTED_FORMATS = frozenset({"tty", "bin", "adp", "xbin", "idf"})


def _looks_like_text(path: Path) -> bool:
    """True when the first 4 KiB are printable UTF-8 without NUL bytes (a text file, not a video)."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 4 KiB boundary
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\r\n\t\f" for ch in text)


def _open_video(path: Path) -> Any | None:
    """Open ``path`` with PyAV when it holds a decodable video stream, else None."""
    import av

    if _looks_like_text(path):
        return None
    try:
        container = av.open(str(path))
    except Exception:  # noqa: BLE001 - not a container FFmpeg understands
        return None
    try:
        if container.format.name in _REJECTED_FORMATS:
            container.close()
            return None
        streams = container.streams.video
        audio_only = not streams and bool(container.streams.audio)
        if not streams or not streams[0].codec_context or not streams[0].codec_context.width:
            container.close()
            if audio_only:
                raise InputError(f"{path} has no video stream (it holds only audio)")
            return None
    except InputError:
        raise
    except Exception:  # noqa: BLE001
        container.close()
        return None
    return container
