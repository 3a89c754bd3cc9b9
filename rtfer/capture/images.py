"""Still images as sources: one image file (:class:`ImageSource`) or every image in a folder
(:class:`FolderSource`), decoded with OpenCV."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtfer.capture.base import Reader, Source
from rtfer.errors import InputError
from rtfer.types import Frame

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif", ".pgm", ".ppm"})


def read_image(path: Path) -> np.ndarray | None:
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

    def _produce_fn(self) -> Callable[[Reader], None]:
        image, name = self._image, self.name

        def produce(reader: Reader) -> None:
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
        first = read_image(files[0])
        if first is not None:
            self.height, self.width = first.shape[:2]
        self._start()

    def _produce_fn(self) -> Callable[[Reader], None]:
        files, warn = list(self.files), self._reader.warn

        def produce(reader: Reader) -> None:
            for path in files:
                if reader.stop.is_set():
                    return
                image = read_image(path)
                if image is None:
                    warn(f"skipped {path.name}: not a readable image")
                    continue
                if not reader.put(Frame(0, 0.0, image, path.name)):
                    return

        return produce
