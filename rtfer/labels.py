"""Class order, sentiment scales and label-order conversions: the single source of truth.

The canonical order is RAF-DB's (label k -> index k-1). Other orders are converted at the edges only.
"""
from __future__ import annotations

import functools

import numpy as np

CLASSES: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
NUM_CLASSES = len(CLASSES)
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

#: FER2013 image-folder names, in their usual (alphabetical) order.
FER2013_FOLDERS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
FER2013_FOLDER_TO_CLASS = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "neutral": "neutral",
    "sad": "sadness",
    "surprise": "surprise",
}
#: The DDAMFN reference repository's checkpoint order.
DDAMFN_REFERENCE_ORDER: tuple[str, ...] = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
#: FER+ vote columns (as in fer2013_ferplus_votes.csv); contempt/unknown/NF have no canonical class.
FERPLUS_COLUMNS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
)
FERPLUS_TO_CLASS = {
    "neutral": "neutral",
    "happiness": "happiness",
    "surprise": "surprise",
    "sadness": "sadness",
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
}

SCALES: dict[str, dict[str, tuple[str, ...]]] = {
    "sentiment3": {
        "negative": ("fear", "disgust", "sadness", "anger"),
        "neutral": ("neutral",),
        "positive": ("happiness", "surprise"),
    },
    "sentiment5": {
        "very_negative": ("anger", "disgust"),
        "negative": ("fear", "sadness"),
        "neutral": ("neutral",),
        "positive": ("surprise",),
        "very_positive": ("happiness",),
    },
    # Only for comparison with published five-group figures.
    "seed5": {
        "surprise_fear": ("surprise", "fear"),
        "disgust_anger": ("disgust", "anger"),
        "happiness": ("happiness",),
        "sadness": ("sadness",),
        "neutral": ("neutral",),
    },
}
#: Every scale a face's label can be shown on: the 7 classes, then the sentiment scales (annotation, UI, CLI).
LABEL_SCALES: tuple[str, ...] = ("emotion", "sentiment5", "sentiment3")


def scale_levels(scale: str) -> tuple[str, ...]:
    """Level names of ``scale`` in their defined order."""
    try:
        return tuple(SCALES[scale])
    except KeyError:
        raise ValueError(f"unknown scale {scale!r}; choose from {sorted(SCALES)}") from None


@functools.lru_cache(maxsize=None)
def scale_matrix(scale: str) -> np.ndarray:
    """(7, L) 0/1 matrix M so that ``probs @ M`` gives each level's probability (built once per scale; read-only)."""
    levels = SCALES[scale] if scale in SCALES else None
    if levels is None:
        scale_levels(scale)  # raises with a clear message
    m = np.zeros((NUM_CLASSES, len(levels)), dtype=np.float32)
    for j, members in enumerate(levels.values()):
        for name in members:
            m[CLASS_INDEX[name], j] = 1.0
    m.flags.writeable = False
    return m


def to_scale(probs: np.ndarray, scale: str) -> np.ndarray:
    """Sum class probabilities ``(..., 7)`` into level probabilities ``(..., L)``."""
    return np.asarray(probs, dtype=np.float32) @ scale_matrix(scale)


def scale_labels(probs: np.ndarray, scale: str) -> list[str]:
    """The argmax level name for each row of ``probs`` (n, 7)."""
    names = scale_levels(scale)
    idx = to_scale(np.atleast_2d(probs), scale).argmax(axis=-1)
    return [names[i] for i in idx]




def valence(probs: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """P(positive) - P(negative) on the 3-level scale, in [-1, 1].

    ``shift`` (7 log-probability offsets, a combiner's ``posterior_shift``) first re-weights each row,
    ``p * exp(shift)`` renormalised: it takes a combiner that answers for equally common classes (``balanced``)
    back to the class frequencies of real faces, so that valence stays an expectation over how faces are, whichever
    combiner names the emotion."""
    if shift is not None:
        shift = np.asarray(shift, np.float64).reshape(NUM_CLASSES)
        p = np.asarray(probs, np.float64) * np.exp(shift - shift.max())
        probs = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-300)
    p3 = to_scale(probs, "sentiment3")
    return p3[..., 2] - p3[..., 0]


def permutation(from_order: tuple[str, ...] | list[str], to_order: tuple[str, ...] = CLASSES) -> np.ndarray:
    """Index array ``perm`` such that ``x_to = x_from[..., perm]``.

    ``from_order`` may use any of the known edge vocabularies (FER2013 folders, FER+ columns, canonical names).
    """
    canon = [_canonical(name) for name in from_order]
    missing = [name for name in to_order if name not in canon]
    if missing:
        raise ValueError(f"order {list(from_order)} lacks classes {missing}")
    return np.array([canon.index(name) for name in to_order], dtype=np.int64)


def reorder(x: np.ndarray, from_order: tuple[str, ...] | list[str], to_order: tuple[str, ...] = CLASSES) -> np.ndarray:
    """Reorder the last axis of ``x`` (probabilities, logits or a classifier's rows) between class orders."""
    return np.asarray(x)[..., permutation(from_order, to_order)]


def remap_labels(labels: np.ndarray, from_order: tuple[str, ...] | list[str], to_order: tuple[str, ...] = CLASSES) -> np.ndarray:
    """Convert integer labels expressed in ``from_order`` into ``to_order`` indices."""
    canon_to = list(to_order)
    lut = np.array([canon_to.index(_canonical(name)) for name in from_order], dtype=np.int64)
    return lut[np.asarray(labels, dtype=np.int64)]


def raf_label_to_index(label: int) -> int:
    """RAF-DB label 1..7 -> canonical index 0..6."""
    if not 1 <= int(label) <= NUM_CLASSES:
        raise ValueError(f"RAF-DB labels are 1..7, got {label}")
    return int(label) - 1


def _canonical(name: str) -> str:
    key = name.strip().lower()
    if key in CLASS_INDEX:
        return key
    if key in FER2013_FOLDER_TO_CLASS:
        return FER2013_FOLDER_TO_CLASS[key]
    aliases = {"happy": "happiness", "sad": "sadness", "angry": "anger", "surprised": "surprise", "disgusted": "disgust",
               "fearful": "fear"}
    if key in aliases:
        return aliases[key]
    raise ValueError(f"unknown class name {name!r}")
