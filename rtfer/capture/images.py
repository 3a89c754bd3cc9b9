"""Still images as sources: one image file (:class:`ImageSource`) or every image in a folder
(:class:`FolderSource`), decoded with OpenCV."""
from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtfer.capture.base import Reader, Source, captured_stderr, check_pixel_count
from rtfer.errors import InputError
from rtfer.types import Frame

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif", ".pgm", ".ppm"})


def image_dimensions(data: bytes | np.ndarray) -> tuple[int, str] | None:
    """(pixels, "WxH pixels") from an image's header without decoding it (Pillow reads headers lazily), or None when
    Pillow does not know the format (OpenCV then decides, with its own limit of 2**30 pixels)."""
    import io
    import warnings

    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        return None
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    head = raw[:32]
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:  # PNG: big-endian
        w, h = struct.unpack(">II", head[16:24])
        return w * h, f"{w}x{h} pixels"
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:  # GIF: the logical screen frames are drawn on
        w, h = struct.unpack("<HH", head[6:10])
        return w * h, f"{w}x{h} pixels"
    buffer = io.BytesIO(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the limit is ours
        try:
            with Image.open(buffer) as im:
                w, h = int(im.size[0]), int(im.size[1])
                return w * h, f"{w}x{h} pixels"
        except Image.DecompressionBombError as exc:  # above Pillow's own hard limit; its message has the size
            match = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(match.group(1)) if match else 1 << 40
            return pixels, f"{pixels} pixels"
        except Exception:  # noqa: BLE001 - not a format Pillow knows, or a broken header: OpenCV decides
            return None


#: "[ERROR:0@26.9] global grfmt_png.cpp:296 readHeader " before OpenCV's own log messages.
_OPENCV_PREFIX = re.compile(r"^\[\s*[A-Z]+:[^\]]*\]\s+(?:global\s+\S+\s+\S+\s+)?")


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file to BGR uint8 (None when it is not an image). Handles non-ASCII paths.

    The header's dimensions are checked against :func:`~rtfer.capture.base.max_image_pixels` before decoding: a
    decompression bomb raises :class:`InputError` (one line) instead of taking gigabytes.
    """
    return decode_image(path)[0]


def decode_image(path: Path) -> tuple[np.ndarray | None, str]:
    """:func:`read_image`, and why it gave None ("" when it did not): the decoder's own message (libpng, libjpeg),
    which is kept off the terminal."""
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    if data.size == 0:
        return None, "empty file"
    size = image_dimensions(data)
    if size is not None:
        check_pixel_count(*size, f"image {Path(path).name}")
    with captured_stderr() as noise:
        try:
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        except cv2.error as exc:  # OpenCV's own size limit (2**30 pixels), a header it cannot take
            if "CV_IO_MAX_IMAGE_PIXELS" in str(exc) or "validateInputImageSize" in str(exc):
                raise InputError(f"image {Path(path).name} is larger than OpenCV decodes (more than 2**30 pixels, "
                                 "or a damaged header)") from None
            image = None
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        return None, "; ".join(_OPENCV_PREFIX.sub("", line) for line in noise)[:200] or \
            "damaged, truncated or not an image format OpenCV decodes"
    return np.ascontiguousarray(image), ""


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
        try:
            first = read_image(files[0])
        except InputError:  # the reader skips it with a warning
            first = None
        if first is not None:
            self.height, self.width = first.shape[:2]
        self._start()

    def _produce_fn(self) -> Callable[[Reader], None]:
        files, warn = list(self.files), self._reader.warn

        def produce(reader: Reader) -> None:
            for path in files:
                if reader.stop.is_set():
                    return
                try:
                    image, why = decode_image(path)
                except InputError as exc:  # above the pixel limit: skip it, as an unreadable image
                    warn(f"skipped {path.name}: {exc}")
                    continue
                if image is None:
                    warn(f"skipped {path.name}: not a readable image ({why})")
                    continue
                if not reader.put(Frame(0, 0.0, image, path.name)):
                    return

        return produce
