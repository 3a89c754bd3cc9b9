"""Synthetic dataset trees for the training tests (tiny images in the real layouts)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


def write_image(path: Path, value: int, size: int = 24, gray: bool = True) -> Path:
    """A small image whose pixels encode ``value`` (so tests can check which file went where)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    img = rng.integers(0, 40, (size, size), dtype=np.uint8) + np.uint8(value % 200)
    if not gray:
        img = np.stack([img, img // 2, 255 - img], axis=-1)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def make_image():
    """The ``write_image`` helper, as a fixture (test modules are not a package)."""
    return write_image


@pytest.fixture
def fer_folder(tmp_path) -> Path:
    """fer2013-style train/ and val/ class folders, 3 images per class in train, 2 in val."""
    root = tmp_path / "fer2013"
    k = 0
    for split, n in (("train", 3), ("val", 2)):
        for c in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"):
            for i in range(n):
                write_image(root / split / c / f"{split}_{c}_{i}.jpg", k)
                k += 1
    return root


def synthetic_split(n_per_class: int, seed: int, size: int = 32) -> dict:
    """Gray images whose class is a bright square at a class-specific place (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(7), n_per_class)
    images = rng.integers(0, 60, (len(labels), size, size, 1), dtype=np.uint8)
    cell = size // 4
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 4)
        images[i, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = 230
    soft = np.full((len(labels), 7), 0.05, np.float32)
    soft[np.arange(len(labels)), labels] = 0.7
    return {"images": images, "labels": labels, "soft": soft,
            "classes": np.array(("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"))}


@pytest.fixture
def tiny_packed(tmp_path) -> tuple[Path, Path]:
    """(train.npz, val.npz) synthetic packed splits."""
    train, val = tmp_path / "train.npz", tmp_path / "val.npz"
    np.savez_compressed(train, **synthetic_split(8, 0))
    np.savez_compressed(val, **synthetic_split(4, 1))
    return train, val
