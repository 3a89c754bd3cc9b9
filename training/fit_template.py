"""Fit a 5-point alignment template to a face dataset, so that runtime crops are framed like its images.

FER2013 images are 48x48 gray crops framed much tighter than the ArcFace template. Running our detector on them
(upscaled to 192 px so that the face is large enough at detection scale) and taking the per-coordinate median of
the landmarks, in crop units, gives the template a bundle trained on FER2013 should align with.

    python -m rtfer.training.fit_template --data /work/shared/data/fer2013/val --limit 2000 --out template.json
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def _prepare(image: np.ndarray, upscale_to: int) -> np.ndarray:
    """Gray or BGR uint8 -> BGR, upscaled (cubic) so that its longer side is at least ``upscale_to``."""
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    if max(h, w) < upscale_to:
        s = upscale_to / max(h, w)
        image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
    return image


def collect_landmarks(images, detector, upscale_to: int = 192) -> tuple[np.ndarray, int]:
    """Landmarks of the highest-scoring face of each image in image units (x / width, y / height), shape (m, 5, 2),
    and the number of images seen. Images without a face are skipped."""
    found, seen = [], 0
    for image in images:
        seen += 1
        img = _prepare(image, upscale_to)
        faces = detector.detect(img)
        if len(faces) == 0:
            continue
        best = int(np.argmax(faces.scores))
        found.append(faces.landmarks[best] / np.array([img.shape[1], img.shape[0]], np.float32))
    return np.asarray(found, np.float64).reshape(-1, 5, 2), seen


def fit_template(images, detector, upscale_to: int = 192) -> np.ndarray:
    """(5, 2) template in crop units: the per-coordinate median of the landmarks found on ``images``
    (uint8 gray or BGR arrays; small ones are upscaled to ``upscale_to`` first)."""
    lms, seen = collect_landmarks(images, detector, upscale_to)
    if len(lms) == 0:
        raise ValueError(f"no face found in any of the {seen} images; cannot fit a template")
    return np.median(lms, axis=0)


def list_images(root: str | Path, limit: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under ``root`` (recursively), a seeded random subset of ``limit`` when given."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None and len(files) > limit:
        files = sorted(random.Random(seed).sample(files, limit))
    return files


def _read(paths):
    import cv2

    for p in paths:
        image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if image is None:
            log.warning("skipping unreadable image %s", p)
            continue
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        yield image


def symmetrize(template: np.ndarray) -> np.ndarray:
    """Average a (5,2) template with its mirror image (x -> 1 - x, left/right points swapped), so that aligned
    faces come out level and centred instead of inheriting the dataset's slight average tilt."""
    t = np.asarray(template, dtype=np.float64)
    mirrored = t[[1, 0, 2, 4, 3]].copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    return (t + mirrored) / 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtfer.training.fit_template",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of face images (searched recursively)")
    parser.add_argument("--limit", type=int, default=2000, help="random subset size (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", default="centerface", help="detector name (default centerface)")
    parser.add_argument("--upscale-to", type=int, default=192, help="upscale smaller images to this side first")
    parser.add_argument("--symmetric", action="store_true",
                        help="average the template with its mirror image (level, centred faces)")
    parser.add_argument("--out", required=True, help="output JSON file")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in dict.fromkeys(("rtfer", __name__)):  # __name__ is "__main__" under python -m
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)

    from rtfer.detection import create_detector

    paths = list_images(args.data, args.limit, args.seed)
    if not paths:
        parser.error(f"no images under {args.data}")
    detector = create_detector(args.detector)
    lms, seen = collect_landmarks(_read(paths), detector, args.upscale_to)
    if len(lms) == 0:
        parser.error(f"no face found in any of the {seen} images under {args.data}")
    template = np.median(lms, axis=0)
    if args.symmetric:
        template = symmetrize(template)
    result = {
        "template": [[round(float(x), 5), round(float(y), 5)] for x, y in template],
        "order": ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"],
        "units": "crop (x / width, y / height)",
        "images": seen,
        "detected": int(len(lms)),
        "detection_rate": round(len(lms) / max(seen, 1), 4),
        "iqr": np.round(np.percentile(lms, 75, axis=0) - np.percentile(lms, 25, axis=0), 4).tolist(),
        "detector": detector.name,
        "upscale_to": args.upscale_to,
        "data": str(args.data),
        "seed": args.seed,
        "symmetric": bool(args.symmetric),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("template from %d/%d images (%.1f%% detected) written to %s", len(lms), seen,
             100 * result["detection_rate"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
