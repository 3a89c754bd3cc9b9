"""Capture stage: turn a file, folder, webcam or stream into an iterator of :class:`rtfer.types.Frame`.

Decoding runs on its own daemon thread into a bounded queue so that the consumer (detection, inference) overlaps
with decoding. Live sources can use ``drop_frames=True``: the queue then holds only the newest frame
(latest-frame-wins) and every frame that is replaced before it is consumed counts in ``Source.dropped``.

Video timestamps come from the container (``frame.time`` = pts * time_base, relative to the stream start), so
variable-frame-rate files get the right times; they never decrease (an AVI's decode-order timestamps are sorted, see
:class:`~rtfer.capture.video.PresentationTimes`). Webcam times come from a monotonic clock. A live stream that drops
is reopened for ``reconnect_s`` seconds (:data:`DEFAULT_RECONNECT_S`), its gaps recorded in ``StreamSource.gaps``.
Images and video frames above :func:`max_image_pixels` are refused from their headers, before decoding.

Modules: :mod:`~rtfer.capture.base` (the Source and its reader thread), :mod:`~rtfer.capture.images` (image files
and folders), :mod:`~rtfer.capture.video` (video files and streams, PyAV), :mod:`~rtfer.capture.camera` (webcams)
and :mod:`~rtfer.capture.opener` (:func:`open_source`). This package re-exports their public names; a test that
patches a constant patches it in the module that reads it (e.g. ``rtfer.capture.camera.CAMERA_STALL_S``).
"""
from __future__ import annotations

from rtfer.capture.base import JOIN_TIMEOUT_S, Source, max_image_pixels
from rtfer.capture.camera import CAMERA_STALL_S, CameraSource
from rtfer.capture.images import IMAGE_EXTENSIONS, FolderSource, ImageSource, decode_image, read_image
from rtfer.capture.opener import STREAM_SCHEMES, is_live_spec, open_source
from rtfer.capture.video import (DEFAULT_RECONNECT_S, STREAM_TIMEOUT_S, VIDEO_EXTENSIONS, StreamSource, VideoSource,
                                 recorded_duration, upright)
from rtfer.errors import redact_url  # re-exported for callers of capture

__all__ = ["CAMERA_STALL_S", "DEFAULT_RECONNECT_S", "IMAGE_EXTENSIONS", "JOIN_TIMEOUT_S", "STREAM_SCHEMES",
           "STREAM_TIMEOUT_S", "VIDEO_EXTENSIONS", "CameraSource", "FolderSource", "ImageSource", "Source",
           "StreamSource", "VideoSource", "decode_image", "is_live_spec", "max_image_pixels", "open_source",
           "read_image", "recorded_duration", "redact_url", "upright"]
