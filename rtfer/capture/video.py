"""Videos decoded with PyAV: local files (:class:`VideoSource`, container timestamps, seeking, display-matrix
rotation) and network URLs (:class:`StreamSource`, live streams or recorded files served over http(s))."""
from __future__ import annotations

import time
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtfer.capture.base import Reader, Source, check_pixels
from rtfer.errors import InputError, one_line, redact_url
from rtfer.types import Frame

#: Common video file extensions (for discovering videos in folders; any file FFmpeg decodes is accepted as input).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                              ".wmv", ".flv", ".3gp", ".ogv", ".mxf", ".vob", ".gif"})
#: Seconds a stream may take to open or to deliver a packet before it is reported unreachable.
STREAM_TIMEOUT_S = 10.0


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

    def _produce_fn(self) -> Callable[[Reader], None]:
        container, stream, name = self._container, self._stream, self.name
        start, fps, expected = self._start_time, self.fps, self.frame_count
        first_index, skip_until, warn = self._next_index, self._skip_until, self._reader.warn
        label, source = self.name, weakref.ref(self)  # no strong reference: a dropped source must still close

        def produce(reader: Reader) -> None:
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

    def _produce_fn(self) -> Callable[[Reader], None]:
        container, stream, name, warn = self._container, self._stream, self.name, self._reader.warn

        def produce(reader: Reader) -> None:
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


def open_stream(url: str) -> Any:
    """Open a stream URL with PyAV (rtsp over tcp, :data:`STREAM_TIMEOUT_S`); InputError without the credentials."""
    import av

    try:
        return av.open(url, timeout=STREAM_TIMEOUT_S,
                       options={"rtsp_transport": "tcp"} if url.lower().startswith("rtsp") else None)
    except Exception as exc:  # noqa: BLE001 - any open failure is an input problem
        raise InputError(f"cannot open stream {redact_url(url)}: {one_line(exc)}") from None


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


def open_video(path: Path) -> Any | None:
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
        ctx = streams[0].codec_context
        try:
            check_pixels(int(ctx.width), int(ctx.height or 1), f"video {path.name}: each frame")
        except InputError:
            container.close()
            raise
    except InputError:
        raise
    except Exception:  # noqa: BLE001
        container.close()
        return None
    return container
