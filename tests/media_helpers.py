"""Helpers that build test media from real faces (imported by tests; not a test module)."""
from __future__ import annotations


def pan_frames(photo, n: int, width: int = 640, out_width: int = 320, step: int = 8, start: int = 0):
    """Frames panning across ``photo`` (real faces moving slowly), downscaled to ``out_width``."""
    import cv2

    h, w = photo.shape[:2]
    out_h = int(round(h * out_width / width)) // 2 * 2
    for i in range(n):
        x = min(w - width, start + i * step)
        yield cv2.resize(photo[:, x:x + width], (out_width, out_h), interpolation=cv2.INTER_AREA)


def write_test_video(path, frames, fps: float = 25.0, *,
                     codec: str = "mpeg4", times=None, faststart: bool = True, codec_options: dict | None = None):
    """Write BGR uint8 ``frames`` to a short video with PyAV (for tests and examples).

    ``codec``: "mpeg4" (fast, everywhere) or "h264"/"libx264". ``times`` (seconds, increasing) sets each frame's
    presentation time explicitly, which builds a variable-frame-rate file; otherwise frames are 1/fps apart.
    Frame sizes are cropped to even width/height as yuv420p requires. ``faststart`` puts an MP4's index first,
    so a truncated copy still decodes up to the cut (as a broken download or recording would). ``codec_options``: the
    encoder's options (e.g. ``{"x264-params": "bframes=3"}`` for B-frames).
    """
    from fractions import Fraction
    from pathlib import Path

    import av
    import numpy as np

    path = Path(path)
    tb = Fraction(1, 1000)
    time_iter = iter(times) if times is not None else None
    n = 0
    options = {"movflags": "faststart"} if faststart and path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    with av.open(str(path), "w", options=options) as container:
        stream = None
        for image in frames:
            image = np.asarray(image, dtype=np.uint8)
            h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
            image = np.ascontiguousarray(image[:h, :w])
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if codec_options:
                    stream.codec_context.options = dict(codec_options)
                if time_iter is not None:
                    stream.time_base = tb
                    stream.codec_context.time_base = tb
                size = (w, h)
            elif (w, h) != size:
                raise ValueError(f"frame {n} is {w}x{h}, the video is {size[0]}x{size[1]}")
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            if time_iter is not None:
                frame.pts = int(round(float(next(time_iter)) / tb))
                frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        if stream is None:
            raise ValueError("write_test_video needs at least one frame")
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_rotated_clip(path, stored, degrees: int, frames: int = 3) -> None:
    """A short clip whose frames are stored as ``stored`` (BGR, even sizes) with a display rotation of ``degrees``,
    as phones record."""
    import av

    h, w = stored.shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.set_display_rotation(degrees)
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(stored, format="bgr24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
