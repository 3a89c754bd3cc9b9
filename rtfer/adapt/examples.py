"""Collecting the examples of ``rtfer adapt``: one sub-folder per emotion (canonical names, FER2013's folder names
and common variants) with photos, face crops or short clips, every face aligned as ``rtfer analyze`` aligns it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtfer.bundle import BundleSpec
from rtfer.errors import InputError
from rtfer.labels import CLASS_INDEX, CLASSES, FER2013_FOLDER_TO_CLASS, NUM_CLASSES

log = logging.getLogger(__name__)

#: Folder-name variants accepted besides the canonical class names and FER2013's folder names.
ALIASES: dict[str, str] = {
    "happy": "happiness", "happiness": "happiness", "joy": "happiness", "smile": "happiness",
    "sad": "sadness", "sadness": "sadness",
    "angry": "anger", "anger": "anger",
    "surprised": "surprise", "surprise": "surprise",
    "disgusted": "disgust", "disgust": "disgust",
    "fearful": "fear", "fear": "fear", "scared": "fear", "afraid": "fear",
    "neutral": "neutral", "calm": "neutral",
}

#: ``--crops auto``: an image whose sides are both at most this many pixels, and roughly square, is taken as a face
#: crop (FER2013's 48x48 faces, RAF-DB's 100x100 aligned faces); larger images are photos in which faces are detected.
CROP_MAX_SIDE = 160
CROP_MAX_ASPECT = 1.25
#: Fewer faces than this in a class draws a warning.
FEW_FACES = 3


def class_for_folder(name: str) -> str | None:
    """The canonical class a sub-folder name stands for (case-insensitive), or None when it names none."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in CLASS_INDEX:
        return key
    if key in FER2013_FOLDER_TO_CLASS:
        return FER2013_FOLDER_TO_CLASS[key]
    return ALIASES.get(key)


def accepted_names() -> list[str]:
    return sorted(set(CLASSES) | set(FER2013_FOLDER_TO_CLASS) | set(ALIASES))


# -- examples --------------------------------------------------------------------------------------------------------
@dataclass
class Examples:
    """Aligned face crops with their labels and source files (as indices; names are never stored in a bundle)."""

    crops: dict[int, np.ndarray]  # member input size -> (n, S, S, 3) uint8 RGB
    labels: np.ndarray  # (n,) canonical class index
    groups: np.ndarray  # (n,) index of the source file
    kinds: dict[str, int] = field(default_factory=dict)  # faces from photos, crops, video frames
    files: int = 0  # source files that gave at least one face
    unreadable: int = 0
    no_face: int = 0  # readable files (photos, frames of clips) without a face

    def __post_init__(self) -> None:
        n = len(self.labels)
        for size, c in self.crops.items():
            if c.shape != (n, size, size, 3):
                raise ValueError(f"crops for size {size} must be ({n}, {size}, {size}, 3), got {c.shape}")
        if self.groups.shape != (n,):
            raise ValueError(f"groups must be ({n},), got {self.groups.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def per_class(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=NUM_CLASSES)
        return {c: int(k) for c, k in zip(CLASSES, counts)}


def _square_crop(image_bgr: np.ndarray, size: int) -> np.ndarray:
    """A face crop (any size) -> centre square resized to ``size``, RGB (as the training crops were fed)."""
    import cv2

    h, w = image_bgr.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    sq = image_bgr[y:y + s, x:x + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(sq, (size, size), interpolation=interp)[:, :, ::-1])


def looks_like_crop(image: np.ndarray) -> bool:
    """``--crops auto``'s rule: small and roughly square (see :data:`CROP_MAX_SIDE`)."""
    h, w = image.shape[:2]
    return max(h, w) <= CROP_MAX_SIDE and max(h, w) / max(1, min(h, w)) <= CROP_MAX_ASPECT


class FaceReader:
    """Turns example files into aligned crops: photos and frames through the analyze detector (largest face), crops
    as they are."""

    def __init__(self, spec: BundleSpec, detector: str, crops: str, clip_frames: int) -> None:
        if crops not in ("auto", "yes", "no"):
            raise ValueError(f"crops must be auto, yes or no, got {crops!r}")
        self.spec = spec
        self.sizes = sorted({m.crop_size for m in spec.members})
        self.detector_name = detector
        self.crops_mode = crops
        self.clip_frames = int(clip_frames)
        self._detector = None

    @property
    def detector(self):
        if self._detector is None:  # the analyze detector, built exactly as rtfer.pipeline.Pipeline builds it
            from rtfer.detection import create_detector
            from rtfer.pipeline import AnalyzeOptions, resolve_detector

            o = AnalyzeOptions(detector=self.detector_name, device="cpu")
            self._detector = create_detector(
                resolve_detector(o.detector, self.spec), det_width=o.det_width, score_threshold=o.det_threshold,
                min_face=o.min_face, max_faces=o.max_faces, device="cpu", allow_fallback=True)
        return self._detector

    def crop(self, image: np.ndarray) -> dict[int, np.ndarray]:
        return {s: _square_crop(image, s) for s in self.sizes}

    def largest_face(self, image: np.ndarray) -> dict[int, np.ndarray] | None:
        from rtfer.detection.align import align_faces

        faces = self.detector.detect(image)
        if len(faces) == 0:
            return None
        area = (faces.xyxy[:, 2] - faces.xyxy[:, 0]) * (faces.xyxy[:, 3] - faces.xyxy[:, 1])
        lm = faces.landmarks[[int(np.argmax(area))]]
        return {s: align_faces(image, lm, s, self.spec.alignment_template)[0][0] for s in self.sizes}

    def image_faces(self, image: np.ndarray) -> tuple[str, dict[int, np.ndarray] | None]:
        if self.crops_mode == "yes" or (self.crops_mode == "auto" and looks_like_crop(image)):
            return "crop", self.crop(image)
        return "photo", self.largest_face(image)

    def clip_faces(self, path: Path) -> tuple[list[dict[int, np.ndarray]], int]:
        """Faces of a sample of a clip's frames (``clip_frames`` spread over the clip; 0 = every frame) and the
        number of sampled frames without a face."""
        from rtfer.capture import open_source

        src = open_source(str(path))
        try:
            total = src.frame_count or 0
            n = self.clip_frames
            wanted = None if n <= 0 or not total else set(np.linspace(0, total - 1, min(n, total)).round().astype(int))
            step = 1 if n <= 0 or total else 5  # unknown length: every 5th frame, at most clip_frames of them
            out, missed, seen = [], 0, 0
            for frame in src:
                i = seen
                seen += 1
                if wanted is not None and i not in wanted:
                    continue
                if wanted is None and i % step:
                    continue
                face = self.largest_face(frame.image)
                if face is None:
                    missed += 1
                else:
                    out.append(face)
                if wanted is None and n > 0 and len(out) + missed >= n:
                    break
            if not seen:
                raise InputError(f"{path.name}: no frame decoded")
            return out, missed
        finally:
            src.close()


def collect_examples(folder: str | Path, spec: BundleSpec, *, detector: str = "auto", crops: str = "auto",
                     clip_frames: int = 10) -> Examples:
    """Read EXAMPLES (one sub-folder per emotion) into aligned crops. Raises :class:`InputError` (one line) for an
    empty folder, an unknown sub-folder name, or no face in any example; unreadable files are skipped and counted."""
    from rtfer.capture import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_image

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"examples folder not found: {folder}" if not folder.exists()
                         else f"examples must be a folder with one sub-folder per emotion: {folder}")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not subdirs:
        raise InputError(f"examples folder {folder} is empty: it needs one sub-folder per emotion "
                         f"({', '.join(CLASSES)})" + (f"; {len(loose)} files lie outside any sub-folder" if loose else ""))
    unknown = [p.name for p in subdirs if class_for_folder(p.name) is None]
    if unknown:
        raise InputError(f"unknown emotion folder {unknown[0]!r} in {folder}; accepted names (any case): "
                         f"{', '.join(accepted_names())}")
    if loose:
        log.warning("ignored %d files directly in %s (examples go in a sub-folder per emotion)", len(loose), folder)
    reader = FaceReader(spec, detector, crops, clip_frames)
    crops_out: dict[int, list] = {s: [] for s in reader.sizes}
    labels: list[int] = []
    groups: list[int] = []
    kinds = {"photo": 0, "crop": 0, "video_frame": 0}
    unreadable = no_face = files = 0
    n_files = 0
    for sub in subdirs:
        label = CLASS_INDEX[class_for_folder(sub.name)]
        for path in sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")):
            n_files += 1
            suffix = path.suffix.lower()
            faces: list[dict[int, np.ndarray]] = []
            kind = "photo"
            try:
                image = read_image(path) if suffix not in VIDEO_EXTENSIONS else None
                if image is not None:
                    kind, face = reader.image_faces(image)
                    if face is None:
                        no_face += 1
                    else:
                        faces = [face]
                elif suffix in IMAGE_EXTENSIONS:
                    unreadable += 1
                    log.debug("skipped %s: not a readable image", path.name)
                    continue
                else:
                    kind = "video_frame"
                    faces, missed = reader.clip_faces(path)
                    no_face += missed
            except InputError as exc:
                unreadable += 1
                log.debug("skipped %s: %s", path.name, exc)
                continue
            if not faces:
                continue
            for face in faces:
                for s in reader.sizes:
                    crops_out[s].append(face[s])
                labels.append(label)
                groups.append(files)
            kinds[kind] += len(faces)
            files += 1
    if unreadable:
        log.warning("skipped %d unreadable file%s (not an image or a video that can be decoded)", unreadable,
                    "s" if unreadable != 1 else "")
    if n_files == 0:
        raise InputError(f"examples folder {folder} is empty: its emotion sub-folders hold no files")
    if not labels:
        raise InputError(f"no face found in any of the {n_files} example files in {folder}"
                         + (f" ({unreadable} unreadable)" if unreadable else "")
                         + "; for face crops larger than 160 px use --crops yes")
    if no_face:
        log.warning("%d example image%s or frame%s had no face and %s skipped", no_face, "s" if no_face != 1 else "",
                    "s" if no_face != 1 else "", "were" if no_face != 1 else "was")
    ex = Examples(crops={s: np.stack(v) for s, v in crops_out.items()}, labels=np.asarray(labels, np.int64),
                  groups=np.asarray(groups, np.int64), kinds={k: v for k, v in kinds.items() if v}, files=files,
                  unreadable=unreadable, no_face=no_face)
    for c, k in ex.per_class().items():
        if 0 < k < FEW_FACES:
            log.warning("class %s has only %d face%s: its figures will be noisy", c, k, "s" if k != 1 else "")
    missing = [c for c, k in ex.per_class().items() if k == 0]
    if missing:
        log.info("no examples of %s: those classes keep the base model's behaviour", ", ".join(missing))
    return ex
