"""Webcams as sources: :class:`CameraSource` reads ``cv2.VideoCapture(index)`` on its reader thread, timed by a
monotonic clock, and reports a camera that stops delivering frames."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from rtfer.capture.base import Reader, Source
from rtfer.errors import InputError
from rtfer.types import Frame

#: A camera whose reads keep failing for this many seconds is reported as stopped.
CAMERA_STALL_S = 2.0


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

    def _produce_fn(self) -> Callable[[Reader], None]:
        cap, t0, first, name, cam = self._cap, self._t0, self._first, self.name, self.index
        self._first = None

        def produce(reader: Reader) -> None:
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
