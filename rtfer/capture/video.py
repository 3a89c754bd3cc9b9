"""Videos decoded with PyAV: local files (:class:`VideoSource`, container timestamps, seeking, display-matrix
rotation) and network URLs (:class:`StreamSource`, live streams or recorded files served over http(s))."""
from __future__ import annotations

import heapq
import logging
import time
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtfer.capture.base import Reader, Source, check_pixels
from rtfer.errors import InputError, one_line, redact_url
from rtfer.types import Frame, StreamGap

log = logging.getLogger(__name__)

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


class PresentationTimes:
    """The presentation time of each decoded frame, never decreasing.

    A decoder returns frames in presentation order, each with the pts of the packet it was coded in. Containers that
    store presentation timestamps (MP4, MKV, TS...) give the right time that way. AVI stores none: the demuxer
    numbers packets in decode order, so with B-frames the decoded frames' times jump back and forth (the AVI of an
    H.264 clip went backwards 14 times in 31 rows). The right times are then the packets' timestamps in sorted order:
    when frame k comes out of the decoder, every packet of frames 0..k has been fed to it, so the k-th smallest pts
    fed so far is frame k's (a heap of the fed packets' pts).

    Both readings agree on a well-formed file. At the first frame where they differ, frames are held (at most
    :attr:`HOLD` of them) until the container's own times either go backwards (they are decode-order numbers: use
    the sorted packet times from then on) or stay in order for :attr:`HOLD` frames (the decoder dropped a packet, e.g.
    a stream cut mid-GOP: keep the container's times). Whatever is chosen, a time that would go backwards is clamped
    to one frame after the previous one and counted in :attr:`clamped`.
    """

    HOLD = 16

    def __init__(self, time_base: Fraction, start: float, fps: float | None) -> None:
        self.time_base = time_base
        self.start = start
        self.step = 1.0 / fps if fps else 0.0
        self.mode: str | None = None  # None (undecided), "container" or "sorted"
        self.clamped = 0
        self._heap: list[int] = []
        self._held: list[tuple[Any, float | None, float | None]] = []  # (frame, container time, sorted time)
        self._last: float | None = None

    def packet(self, packet: Any) -> None:
        if packet.pts is not None and packet.size:
            heapq.heappush(self._heap, int(packet.pts))

    def _seconds(self, pts: int | None) -> float | None:
        return None if pts is None else float(pts * self.time_base) - self.start

    def frame(self, frame: Any) -> list[tuple[Any, float]]:
        """The frames ready to emit, with their times (held frames come out once the mode is decided)."""
        own = self._seconds(frame.pts)
        ordered = self._seconds(heapq.heappop(self._heap)) if self._heap else None
        if self.mode is None and not self._held and (own is None or ordered is None or abs(own - ordered) < 1e-9):
            return [(frame, self._monotonic(own))]
        if self.mode is not None:
            return [(frame, self._monotonic(ordered if self.mode == "sorted" and ordered is not None else own))]
        self._held.append((frame, own, ordered))
        owns = [o for _, o, _ in self._held if o is not None]
        if any(b < a for a, b in zip(owns, owns[1:])) or (self._last is not None and owns and owns[0] < self._last):
            self.mode = "sorted"
        elif len(self._held) >= self.HOLD:
            self.mode = "container"
        return self.flush() if self.mode is not None else []

    def flush(self) -> list[tuple[Any, float]]:
        """Release the held frames (at the end of the file: with the mode decided by what was seen)."""
        held, self._held = self._held, []
        sort = self.mode == "sorted" or (self.mode is None and len(held) > 1 and any(
            b < a for (_, a, _), (_, b, _) in zip(held, held[1:]) if a is not None and b is not None))
        return [(f, self._monotonic(ordered if sort and ordered is not None else own)) for f, own, ordered in held]

    @property
    def last_time(self) -> float | None:
        """The time of the last frame emitted (None before the first)."""
        return self._last

    def _monotonic(self, t: float | None) -> float:
        last = self._last
        if t is None:
            t = 0.0 if last is None else last + self.step
        elif last is not None and t < last:
            self.clamped += 1
            t = last + self.step
        self._last = t
        return t


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
        guessed = stream.guessed_rate
        if rate and guessed and float(rate) > 2 * float(guessed):  # AVI: the header's "rate" is its time base
            rate = guessed
        self.fps = float(rate) if rate else None
        ctx = stream.codec_context
        self.width, self.height = int(ctx.width or 0) or None, int(ctx.height or 0) or None
        if stream.duration is not None:
            self.duration_s = float(stream.duration * tb)
        elif container.duration is not None:
            self.duration_s = container.duration / 1_000_000
        estimate = int(round(self.duration_s * self.fps)) if self.duration_s and self.fps else None
        if stream.frames and (estimate is None or stream.frames <= 1.5 * estimate + 2):
            self.frame_count = int(stream.frames)
        else:  # no count, or one the duration contradicts (AVI counts time-base ticks; a damaged header)
            self.frame_count = estimate
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        if self.frame_count and size is not None and self.frame_count > size:  # not even a byte per frame
            self.frame_count = None
        self._next_index = 0
        self._skip_until: float | None = None
        self._start()

    def _produce_fn(self) -> Callable[[Reader], None]:
        container, stream, name = self._container, self._stream, self.name
        start, fps, expected, duration = self._start_time, self.fps, self.frame_count, self.duration_s
        first_index, skip_until, warn = self._next_index, self._skip_until, self._reader.warn
        label, source = self.name, weakref.ref(self)  # no strong reference: a dropped source must still close
        self_time_base = self._time_base

        def produce(reader: Reader) -> None:
            index = first_index
            times = PresentationTimes(self_time_base, start, fps)

            def emit(frame: Any, t: float) -> bool:
                nonlocal index
                if skip_until is not None and t < skip_until - 1e-6:
                    return True
                image = upright(frame)
                owner = source() if index == first_index else None
                if owner is not None:
                    owner.height, owner.width = image.shape[:2]  # as displayed (rotation applied)
                del owner
                if not reader.put(Frame(index, t, image, name)):
                    return False
                index += 1
                return True

            try:
                for packet in container.demux(stream):
                    if reader.stop.is_set():
                        return
                    times.packet(packet)
                    for frame in packet.decode():
                        for ready, t in times.frame(frame):
                            if reader.stop.is_set() or not emit(ready, t):
                                return
                for ready, t in times.flush():
                    if reader.stop.is_set() or not emit(ready, t):
                        return
            except Exception as exc:  # noqa: BLE001 - damaged data ends the video with a warning
                for ready, t in times.flush():  # the frames held while deciding how to time them
                    if reader.stop.is_set() or not emit(ready, t):
                        return
                if index == first_index and first_index == 0 and skip_until is None:
                    raise InputError(f"cannot decode any frame of {label} ({one_line(exc)}); the file is damaged or "
                                     "truncated") from None
                warn(f"{label}: decoding stopped after {index} frames ({one_line(exc)}); the file may be truncated")
                return
            finally:
                if times.clamped:
                    warn(f"{label}: the container's timestamps went backwards {times.clamped} times; those frames "
                         "were timed after the frame before them (time_s never decreases)")
            if first_index == 0 and skip_until is None:
                if index == 0:  # never silence: a file with no decodable frame is an error
                    raise InputError(f"cannot decode any frame of {label} (damaged, truncated or an unsupported "
                                     "codec?)")
                end = times.last_time
                short = (end + 2 * times.step < 0.9 * duration) if duration and end is not None else \
                    bool(expected and index < 0.9 * expected)
                if short:
                    stated = f"{expected} frames, {duration:.1f} s" if expected and duration else \
                        f"{duration:.1f} s" if duration else f"{expected} frames"
                    warn(f"{label}: only {index} frames ({(end or 0.0):.1f} s) decoded of the {stated} its header "
                         "states; the file may be truncated")

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


#: Seconds a live stream that drops is retried (with backoff) before the run ends (``--reconnect``).
DEFAULT_RECONNECT_S = 60.0
#: Seconds between reconnection attempts: doubling from the first to the last.
RECONNECT_BACKOFF_S = (0.5, 8.0)


class StreamSource(Source):
    """A network stream (rtsp, http, udp...) decoded with PyAV. Times from the stream, relative to its first frame.

    A live stream that drops (the connection fails or the stream ends) is reopened with backoff for up to
    ``reconnect_s`` seconds (default :data:`DEFAULT_RECONNECT_S`; 0 = never): frames go on with the next index and
    with times that include the gap, each drop is logged and recorded in :attr:`gaps`
    (:class:`~rtfer.types.StreamGap`), and when the stream never comes back the source ends with :attr:`lost` set
    to a one-line message. A recorded file served over http(s) is not reconnected (it ends as a file does).
    """

    kind = "stream"

    def __init__(self, url: str, container: Any, *, reconnect_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(redact_url(url), **kwargs)
        self.name = redact_url(url)  # CSV source cells, messages: never the credentials
        self._url = url
        stream = _video_stream(container, self.name)
        self._state = {"container": container, "stream": stream}  # replaced on each reconnect
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.duration_s = recorded_duration(url, container)
        if self.duration_s is not None:  # a recorded file served over http(s): every frame, with progress
            self.kind = "remote_video"
            self.frame_count = int(round(self.duration_s * self.fps)) if self.fps else None
        ctx = stream.codec_context
        self.width, self.height = int(ctx.width or 0) or None, int(ctx.height or 0) or None
        if reconnect_s is None:
            reconnect_s = DEFAULT_RECONNECT_S
        if not reconnect_s >= 0:
            raise InputError(f"--reconnect must be >= 0 seconds, got {reconnect_s}")
        self.reconnect_s = 0.0 if self.kind == "remote_video" else float(reconnect_s)
        self.gaps: list[StreamGap] = []
        self.lost: str | None = None
        self._start()

    def _produce_fn(self) -> Callable[[Reader], None]:
        name, warn, url, patience = self.name, self._reader.warn, self._url, self.reconnect_s
        state, gaps = self._state, self.gaps
        source = weakref.ref(self)

        def produce(reader: Reader) -> None:
            index = 0
            clock0 = time.monotonic()
            last_t: float | None = None
            gap: StreamGap | None = None
            offset = 0.0  # added to the stream's own times: a reconnected stream restarts its clock
            while True:
                container, stream = state["container"], state["stream"]
                first: float | None = None
                try:
                    for frame in container.decode(stream):
                        if reader.stop.is_set():
                            return
                        if frame.time is not None:
                            first = float(frame.time) if first is None else first
                            t = offset + float(frame.time) - first
                        else:
                            t = time.monotonic() - clock0
                        if last_t is not None and t <= last_t:
                            t = last_t + 1e-3  # never backwards, also across a reconnect
                        if gap is not None:
                            gap.end_s, gap.resume_index = t, index
                            log.warning("%s: the stream is back after %.1f s; frames continue from %d", name,
                                        t - (gap.start_s or 0.0), index)
                            gap = None
                        last_t = t
                        if not reader.put(Frame(index, t, upright(frame), name)):
                            return
                        index += 1
                    reason = "the stream ended"
                except Exception as exc:  # noqa: BLE001
                    reason = one_line(exc).replace(f": '{name}'", "")  # PyAV repeats the URL
                _close_quietly(container)
                if reader.stop.is_set():
                    return
                if patience <= 0:
                    warn(f"{name}: stream stopped after {index} frames ({reason})")
                    return
                dropped_at = time.monotonic()
                gap = StreamGap(name, last_t, reason)
                gaps.append(gap)
                log.warning("%s: stream dropped after %d frames (%s); reconnecting for up to %g s", name, index,
                            reason, patience)
                opened = _reconnect(url, patience, reader.stop)
                if opened is None:
                    return  # asked to stop
                if isinstance(opened, str):
                    message = (f"{name}: the stream dropped after {index} frames ({reason}) and did not come back "
                               f"within {patience:g} s ({opened})")
                    owner = source()
                    if owner is not None:
                        owner.lost = message  # the run layer ends the run with it, as an error
                    del owner
                    log.warning("%s: gave up reconnecting after %g s (%s)", name, patience, opened)
                    return
                state["container"], state["stream"] = opened, opened.streams.video[0]
                offset = (last_t if last_t is not None else 0.0) + (time.monotonic() - dropped_at)

        return produce

    def _release(self) -> None:
        _close_quietly(self._state["container"])


def _close_quietly(container: Any) -> None:
    try:
        container.close()
    except Exception:  # noqa: BLE001
        pass


def _reconnect(url: str, patience: float, stop: Any) -> Any:
    """Reopen ``url`` with doubling waits for up to ``patience`` seconds: the container, the last error (a string)
    when it never opened, or None when ``stop`` was set."""
    deadline = time.monotonic() + patience
    delay, cap = RECONNECT_BACKOFF_S
    error = "no answer"
    while True:
        if stop.wait(max(0.0, min(delay, deadline - time.monotonic()))):
            return None
        try:
            container = open_stream(url, timeout=max(1.0, min(STREAM_TIMEOUT_S, deadline - time.monotonic())))
            if container.streams.video:
                return container
            _close_quietly(container)
            error = "no video stream"
        except InputError as exc:
            error = str(exc).split(": ", 1)[-1].replace(f": '{redact_url(url)}'", "")
        if time.monotonic() >= deadline:
            return error
        delay = min(delay * 2, cap)


def recorded_duration(url: str, container: Any) -> float | None:
    """The duration in seconds of an http(s) URL that serves a recorded file (the container knows its length), else
    None: a live stream (rtsp, udp, HLS live...) has no known duration."""
    if not url.lower().startswith(("http://", "https://")):
        return None
    duration = getattr(container, "duration", None)  # AV_TIME_BASE units (microseconds)
    return float(duration) / 1e6 if duration and duration > 0 else None


def open_stream(url: str, timeout: float = STREAM_TIMEOUT_S) -> Any:
    """Open a stream URL with PyAV (rtsp over tcp, :data:`STREAM_TIMEOUT_S`); InputError without the credentials."""
    import av

    try:
        return av.open(url, timeout=timeout,
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
