"""Datasets: readers for RAF-DB (official and Kaggle layouts), image folders (FER2013) and FER+ vote CSVs; packing
into one compressed uint8 .npz; a batch loader that yields uint8 tensors for on-device augmentation.

Every reader returns a :class:`SampleIndex` (paths, canonical labels, optional soft targets), so packing and
training never care which layout the data came from. Labels are always in the canonical (RAF-DB) order.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtfer.errors import InputError
from rtfer.labels import CLASSES, FERPLUS_COLUMNS, FERPLUS_TO_CLASS, NUM_CLASSES, raf_label_to_index, remap_labels

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class SampleIndex:
    """A dataset before decoding: image paths, canonical labels (n,) and optional soft targets (n, 7)."""

    paths: list[Path]
    labels: np.ndarray
    soft: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= NUM_CLASSES):
            raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}")
        if self.soft is not None:
            self.soft = np.asarray(self.soft, dtype=np.float32)
            if self.soft.shape != (len(self.labels), NUM_CLASSES):
                raise ValueError(f"soft targets must be ({len(self.labels)}, {NUM_CLASSES}), got {self.soft.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> SampleIndex:
        idx = np.asarray(idx, dtype=np.int64)
        return SampleIndex([self.paths[i] for i in idx], self.labels[idx],
                           None if self.soft is None else self.soft[idx], self.source, dict(self.meta))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)


# ----------------------------------------------------------------------------------------------------------- readers

def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(root: str | Path) -> SampleIndex:
    """``root/<class>/*.jpg`` with class folder names in any known vocabulary (FER2013 names, canonical names)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist")
    paths: list[Path] = []
    labels: list[int] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            cls = int(remap_labels(np.zeros(1, np.int64), (sub.name,))[0])  # any known class vocabulary
        except ValueError:
            log.warning("skipping folder %s: not an emotion class name", sub)
            continue
        files = _images_in(sub)
        paths += files
        labels += [cls] * len(files)
    if not paths:
        raise InputError(f"no images found in class folders under {root}")
    return SampleIndex(paths, np.array(labels), source=f"folder:{root}")


def detect_rafdb_layout(root: str | Path) -> str:
    """'official' (basic/EmoLabel/list_patition_label.txt) or 'kaggle' (DATASET/{train,test}/{1..7})."""
    root = Path(root)
    if (root / "basic" / "EmoLabel" / "list_patition_label.txt").is_file() or \
            (root / "EmoLabel" / "list_patition_label.txt").is_file():
        return "official"
    if (root / "DATASET" / "train").is_dir() or ((root / "train").is_dir() and (root / "train" / "1").is_dir()):
        return "kaggle"
    raise InputError(f"{root} is neither an official RAF-DB folder (basic/EmoLabel/list_patition_label.txt) "
                     "nor the Kaggle layout (DATASET/train/1..7)")


def read_rafdb(root: str | Path, split: str = "train") -> SampleIndex:
    """RAF-DB basic emotions, ``split`` in {train, test}; either layout (detected)."""
    if split not in ("train", "test"):
        raise ValueError(f"RAF-DB split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    layout = detect_rafdb_layout(root)
    return (_read_rafdb_official if layout == "official" else _read_rafdb_kaggle)(root, split)


def _read_rafdb_official(root: str | Path, split: str) -> SampleIndex:
    root = Path(root)
    basic = root / "basic" if (root / "basic").is_dir() else root
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    image_dir = basic / "Image" / "aligned"
    paths, labels = [], []
    for line_no, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise InputError(f"{label_file}:{line_no}: expected 'name label', got {line!r}")
        name, label = parts
        if not name.startswith(split + "_"):
            continue
        stem = Path(name).stem
        path = image_dir / f"{stem}_aligned.jpg"
        if not path.is_file():
            raise InputError(f"RAF-DB image {path} listed in {label_file.name} is missing")
        paths.append(path)
        labels.append(raf_label_to_index(int(label)))
    if not paths:
        raise InputError(f"no {split} images listed in {label_file}")
    return SampleIndex(paths, np.array(labels), source=f"rafdb-official:{root}:{split}")


def _read_rafdb_kaggle(root: str | Path, split: str) -> SampleIndex:
    root = Path(root)
    base = root / "DATASET" if (root / "DATASET").is_dir() else root
    split_dir = base / split
    if not split_dir.is_dir():
        raise InputError(f"RAF-DB (Kaggle layout) has no {split_dir}")
    csv_path = next((p for p in (root / f"{split}_labels.csv", base / f"{split}_labels.csv") if p.is_file()), None)
    paths, labels = [], []
    if csv_path is not None:
        with open(csv_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                name, label = row.get("image"), row.get("label")
                if name is None or label is None:
                    raise InputError(f"{csv_path} needs 'image' and 'label' columns")
                path = split_dir / str(int(label)) / name
                if not path.is_file():
                    raise InputError(f"RAF-DB image {path} listed in {csv_path.name} is missing")
                paths.append(path)
                labels.append(raf_label_to_index(int(label)))
    else:  # the folder name is the label
        for k in range(1, NUM_CLASSES + 1):
            sub = split_dir / str(k)
            files = _images_in(sub) if sub.is_dir() else []
            paths += files
            labels += [raf_label_to_index(k)] * len(files)
    if not paths:
        raise InputError(f"no images in {split_dir}")
    return SampleIndex(paths, np.array(labels), source=f"rafdb-kaggle:{root}:{split}")


#: The FER+ vote columns that map to canonical classes, and where they go.
_FERPLUS_VALID = [c for c in FERPLUS_COLUMNS if c in FERPLUS_TO_CLASS]
_FERPLUS_TO_INDEX = np.array([CLASSES.index(FERPLUS_TO_CLASS[c]) for c in _FERPLUS_VALID])


def ferplus_targets(votes: np.ndarray, min_votes: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FER+ vote rows (n, 10) in FERPLUS_COLUMNS order -> (keep mask, canonical labels, soft targets (n, 7)).

    The label is the class with the most votes; rows are dropped when that maximum is shared by several columns
    (ambiguous) or falls on contempt / unknown / not-a-face. Soft targets are the vote distribution over the 7
    canonical classes (contempt / unknown / NF votes ignored), after dropping outlier votes: a class with fewer than
    ``min_votes`` votes gets none (the FER+ paper's outlier removal; 1 keeps every vote). The majority class always
    keeps its votes.
    """
    votes = np.asarray(votes, dtype=np.float64)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS):
        raise ValueError(f"votes must be (n, {len(FERPLUS_COLUMNS)}), got {votes.shape}")
    top = votes.max(axis=1)
    winners = votes == top[:, None]
    unique = winners.sum(axis=1) == 1
    arg = votes.argmax(axis=1)
    valid_cols = np.array([c in FERPLUS_TO_CLASS for c in FERPLUS_COLUMNS])
    keep = unique & valid_cols[arg] & (top > 0)
    col_to_index = np.full(len(FERPLUS_COLUMNS), -1)
    col_to_index[valid_cols] = _FERPLUS_TO_INDEX
    labels = np.where(keep, col_to_index[arg], -1)
    soft = np.zeros((len(votes), NUM_CLASSES), np.float32)
    soft[:, _FERPLUS_TO_INDEX] = votes[:, valid_cols]
    if min_votes > 1:
        majority = soft.max(axis=1, keepdims=True)
        soft = np.where((soft < min_votes) & (soft < majority), 0.0, soft).astype(np.float32)
    total = soft.sum(axis=1, keepdims=True)
    soft = np.divide(soft, total, out=np.zeros_like(soft), where=total > 0)
    return keep, labels, soft


def read_ferplus(csv_path: str | Path, images_root: str | Path, split: str = "train", min_votes: int = 2) -> SampleIndex:
    """FER+ labels for ``images_root/<split>/<class>/<file>`` from the votes CSV (majority label + soft targets)."""
    csv_path, images_root = Path(csv_path), Path(images_root)
    if not csv_path.is_file():
        raise InputError(f"FER+ votes file {csv_path} does not exist")
    paths, votes = [], []
    skipped_nf = 0
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("split", "class", "file", *FERPLUS_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{csv_path} lacks the columns {missing}")
        for row in reader:
            if row["split"] != split:
                continue
            if not row.get("ferplus_image", "x") or row[FERPLUS_COLUMNS[0]] == "":
                skipped_nf += 1  # FER+ marks it not-a-face: no votes
                continue
            paths.append(images_root / split / row["class"] / row["file"])
            votes.append([float(row[c]) for c in FERPLUS_COLUMNS])
    if not paths:
        raise InputError(f"no rows with split {split!r} in {csv_path}")
    keep, labels, soft = ferplus_targets(np.array(votes), min_votes)
    idx = np.flatnonzero(keep)
    missing_files = [paths[i] for i in idx[:50] if not paths[i].is_file()]
    if missing_files:
        raise InputError(f"FER+ image {missing_files[0]} is missing (is {images_root} the fer2013 folder?)")
    log.info("FER+ %s: %d rows, %d kept, %d dropped (no face %d)", split, len(paths) + skipped_nf, len(idx),
             len(paths) - len(idx) + skipped_nf, skipped_nf)
    return SampleIndex([paths[i] for i in idx], labels[idx], soft[idx], source=f"ferplus:{csv_path}:{split}")


def stratified_split(labels: np.ndarray, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``fraction`` of every class goes to val (at least one where a class has 2+ items)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction))
        if n_val == 0 and len(idx) > 1 and fraction > 0:
            n_val = 1
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@dataclass
class DataSpec:
    """Where one split comes from: ``kind`` in {folder, rafdb, ferplus, packed}."""

    kind: str
    root: str
    split: str = "train"
    votes: str = ""
    min_votes: int = 2  # ferplus: a class needs this many votes to enter the soft target
    val_fraction: float = 0.0  # RAF-DB: carve a stratified validation split from train
    part: str = "all"  # all | train | val (which side of the carved split)
    seed: int = 0


def read_spec(spec: DataSpec) -> SampleIndex:
    """Build the SampleIndex a DataSpec describes."""
    if spec.kind == "folder":
        index = read_image_folder(Path(spec.root) / spec.split if spec.split else spec.root)
    elif spec.kind == "rafdb":
        index = read_rafdb(spec.root, spec.split)
    elif spec.kind == "ferplus":
        index = read_ferplus(spec.votes, spec.root, spec.split, spec.min_votes)
    else:
        raise InputError(f"unknown dataset kind {spec.kind!r} (expected folder, rafdb or ferplus)")
    if spec.part != "all":
        tr, va = stratified_split(index.labels, spec.val_fraction, spec.seed)
        index = index.subset(tr if spec.part == "train" else va)
    return index


# ----------------------------------------------------------------------------------------------------------- packing

def decode_images(paths: list[Path], size: int | None = None, progress: bool = True) -> np.ndarray:
    """Decode images into one uint8 array (n, S, S, C); C=1 when every image is grayscale, else 3 (RGB)."""
    import cv2
    from tqdm import tqdm

    imgs = []
    all_gray = True
    for p in tqdm(paths, desc="decode", unit="img", disable=not progress, leave=False):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(f"cannot decode image {p}")
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        if img.ndim == 3:
            b, g, r = img[..., 0], img[..., 1], img[..., 2]
            if np.array_equal(b, g) and np.array_equal(g, r):
                img = b
            else:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                all_gray = False
        if size is not None and (img.shape[0] != size or img.shape[1] != size):
            interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
            img = cv2.resize(img, (size, size), interpolation=interp)
        imgs.append(img)
    shapes = {im.shape[:2] for im in imgs}
    if len(shapes) > 1:
        raise InputError(f"images have different sizes {sorted(shapes)[:3]}...; pack with a fixed size")
    if all_gray:
        return np.stack(imgs)[..., None] if imgs else np.zeros((0, size or 0, size or 0, 1), np.uint8)
    return np.stack([np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im for im in imgs])


def pack(index: SampleIndex, out: str | Path, size: int | None = None, progress: bool = True) -> Path:
    """Decode ``index`` once into a compressed .npz (images uint8 NHWC, labels, soft targets, class names)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = decode_images(index.paths, size, progress)
    arrays = {"images": images, "labels": index.labels, "classes": np.array(CLASSES),
              "files": np.array([str(p) for p in index.paths]), "source": np.array(index.source)}
    if index.soft is not None:
        arrays["soft"] = index.soft
    np.savez_compressed(out, **arrays)
    log.info("packed %d images %s into %s (%.1f MB)", len(images), images.shape[1:], out, out.stat().st_size / 1e6)
    return out


@dataclass
class Packed:
    """A packed dataset in memory."""

    images: np.ndarray  # (n, H, W, C) uint8
    labels: np.ndarray  # (n,) int64
    soft: np.ndarray | None = None
    files: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)


def load_packed(path: str | Path) -> Packed:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"packed dataset {path} does not exist (create it with `python -m rtfer.training pack`)")
    with np.load(path, allow_pickle=False) as z:
        if "classes" in z and tuple(str(c) for c in z["classes"]) != CLASSES:
            raise InputError(f"{path} uses class order {list(z['classes'])}, expected {list(CLASSES)}")
        return Packed(z["images"], z["labels"].astype(np.int64), z["soft"] if "soft" in z else None,
                      z["files"] if "files" in z else None)


def load_split(spec: DataSpec | str | Path, size: int | None = None) -> Packed:
    """A packed .npz path, or a DataSpec decoded in memory (small data, tests)."""
    if isinstance(spec, (str, Path)):
        return load_packed(spec)
    if spec.kind == "packed":
        return load_packed(spec.root)
    index = read_spec(spec)
    return Packed(decode_images(index.paths, size, progress=False), index.labels, index.soft,
                  np.array([str(p) for p in index.paths]))


class BatchLoader:
    """Yields (images uint8 NCHW tensor on ``device``, labels, soft targets or None) batches from a Packed set.

    Shuffling and weighted sampling are done with a seeded generator so runs are reproducible; decoding cost is
    nil (the data are already uint8 arrays), and augmentation happens afterwards on the batch tensor.
    """

    def __init__(self, data: Packed, batch_size: int, *, shuffle: bool = False, drop_last: bool = False,
                 sample_weights: np.ndarray | None = None, seed: int = 0, device: str = "cpu") -> None:
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.sample_weights = sample_weights
        self.seed = seed
        self.device = device
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        n = len(self.data)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.sample_weights is not None:
            p = np.asarray(self.sample_weights, np.float64)
            return rng.choice(n, size=n, replace=True, p=p / p.sum())
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self):
        import torch

        order = self.order()
        for b in range(len(self)):
            idx = np.sort(order[b * self.batch_size:(b + 1) * self.batch_size]) if not self.shuffle and \
                self.sample_weights is None else order[b * self.batch_size:(b + 1) * self.batch_size]
            x = torch.from_numpy(np.ascontiguousarray(self.data.images[idx])).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2)
            y = torch.from_numpy(self.data.labels[idx]).to(self.device, non_blocking=True)
            s = None if self.data.soft is None else torch.from_numpy(self.data.soft[idx]).to(self.device)
            yield x, y, s


def mix_folder_labels(data: Packed, weight: float) -> Packed:
    """Blend each soft target with the one-hot class of the image's folder: ``(1 - weight) * soft + weight * folder``.

    For FER2013 packed with FER+ votes the folder is the original FER2013 label: the emotion the image was searched
    for (often posed), where FER+ gives the emotion a crowd perceives. 28% of the images FER+ calls surprise were
    collected as fear, for example. Labels (the FER+ majority, used for validation) are unchanged."""
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"data.folder_label_weight must be in [0, 1], got {weight}")
    if weight == 0.0:
        return data
    if data.soft is None or data.files is None:
        raise InputError("data.folder_label_weight needs soft targets and file paths (a set packed from FER+ votes)")
    names, which = np.unique([Path(str(f)).parent.name for f in data.files], return_inverse=True)
    try:
        folder_labels = remap_labels(which, tuple(str(n) for n in names))
    except (KeyError, ValueError) as exc:
        raise InputError(f"data.folder_label_weight: a folder is not an emotion class name ({exc})") from None
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[folder_labels]
    soft = ((1.0 - weight) * data.soft + weight * onehot).astype(np.float32)
    return Packed(data.images, data.labels, soft, data.files)


def class_balanced_weights(labels: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-sample weights ∝ (1/class count)^power, for weighted sampling."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0) ** power
    return w[labels]
