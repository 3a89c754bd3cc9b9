"""Which source a spec names: :func:`open_source` opens a webcam index, stream URL, folder, image or video file as
the matching :class:`~rtfer.capture.base.Source`, and :func:`is_live_spec` tells live specs from files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rtfer.capture.base import Source
from rtfer.capture.camera import CameraSource
from rtfer.capture.images import IMAGE_EXTENSIONS, FolderSource, ImageSource, decode_image, read_image
from rtfer.capture.video import StreamSource, VideoSource, open_stream, open_video, recorded_duration
from rtfer.errors import InputError

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://", "rtp://")


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


def open_source(spec: str | int | os.PathLike, *, prefetch: int = 8, drop_frames: bool | None = False,
                reconnect_s: float | None = None) -> Source:
    """Open a video file, image, folder of images, webcam index (``0`` or ``"0"``) or stream URL.

    ``drop_frames=None`` decides by the source: cameras and live streams drop frames (latest frame wins), files,
    including a recorded file served over http(s), deliver every frame. ``reconnect_s``: how long a live stream that
    drops is retried (None = :data:`~rtfer.capture.video.DEFAULT_RECONNECT_S`, 0 = not at all). Raises
    :class:`InputError` with a one-line message when the input cannot be read.
    """
    if isinstance(spec, bool):
        raise InputError(f"not an input: {spec!r}")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit() and not Path(spec).exists()):
        return CameraSource(int(spec), prefetch=prefetch, drop_frames=True if drop_frames is None else drop_frames)
    text = os.fspath(spec)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.lower().startswith(STREAM_SCHEMES):
        container = open_stream(text)
        if drop_frames is None:  # a recorded file over http(s) (known duration) delivers every frame
            drop_frames = recorded_duration(text, container) is None
        return StreamSource(text, container, prefetch=prefetch, drop_frames=drop_frames, reconnect_s=reconnect_s)
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
        image, why = decode_image(path)
        if image is None:
            raise InputError(f"cannot decode image {path} ({why})")
        return ImageSource(path, image, prefetch=prefetch, drop_frames=drop_frames)
    container = open_video(path)
    if container is None:
        image = read_image(path)  # an image with an unusual extension
        if image is not None:
            return ImageSource(path, image, prefetch=prefetch, drop_frames=drop_frames)
        raise InputError(f"cannot read {path}: not a video or image file FFmpeg can decode (damaged or truncated?)")
    return VideoSource(path, container, prefetch=prefetch, drop_frames=drop_frames)
