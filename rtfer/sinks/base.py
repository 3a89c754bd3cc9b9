"""Shared by every sink: the :class:`Sink` base, :func:`prepare_output_path`, the timeline schema (:data:`CSV_COLUMNS`,
:data:`RAW_COLUMNS`, :func:`columns`) and :func:`result_records`, one frame's rows in that schema."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rtfer.errors import OutputError
from rtfer.labels import CLASSES, scale_labels
from rtfer.types import FrameResult, StreamGap

CSV_COLUMNS: tuple[str, ...] = (
    "source", "frame", "time_s", "face_id", "x1", "y1", "x2", "y2", "det_score", *CLASSES,
    "emotion", "confidence", "sentiment5", "sentiment3", "valence",
)
RAW_COLUMNS: tuple[str, ...] = (*(f"raw_{c}" for c in CLASSES), "raw_emotion")


def columns(raw: bool = False) -> tuple[str, ...]:
    """The timeline schema (DESIGN.md), with the ``--raw`` columns appended when asked."""
    return CSV_COLUMNS + RAW_COLUMNS if raw else CSV_COLUMNS


def _r(x: float, nd: int) -> float:
    """Round for output; -0.0 becomes 0.0."""
    v = round(float(x), nd)
    return 0.0 if v == 0 else v


def result_records(result: FrameResult, *, raw: bool = False, source_name: str | None = None) -> list[dict]:
    """Rows (dicts keyed by :func:`columns`) for one frame: one per face, or one with empty face fields.

    Probabilities, confidence, valence and det_score have 4 decimals, times 3, boxes 1. Empty fields are None.
    """
    cols = columns(raw)
    base = {"source": source_name if source_name is not None else result.source, "frame": int(result.index),
            "time_s": _r(result.time_s, 3)}
    n = len(result.faces)
    if n == 0:
        return [{c: base.get(c) for c in cols}]
    probs = result.smoothed.probs
    top = probs.argmax(axis=1)
    s5 = scale_labels(probs, "sentiment5")
    s3 = scale_labels(probs, "sentiment3")
    val = result.smoothed.valence
    raw_probs = result.raw.probs
    rows = []
    for i in range(n):
        tid = int(result.faces.track_ids[i])
        x1, y1, x2, y2 = (float(v) for v in result.faces.xyxy[i])
        row: dict[str, Any] = dict(base)
        row.update(face_id=tid if tid >= 0 else i, x1=_r(x1, 1), y1=_r(y1, 1), x2=_r(x2, 1), y2=_r(y2, 1),
                   det_score=_r(result.faces.scores[i], 4))
        for k, name in enumerate(CLASSES):
            row[name] = _r(probs[i, k], 4)
        row.update(emotion=CLASSES[top[i]], confidence=_r(probs[i, top[i]], 4), sentiment5=s5[i], sentiment3=s3[i],
                   valence=_r(val[i], 4))
        if raw:
            for k, name in enumerate(CLASSES):
                row[f"raw_{name}"] = _r(raw_probs[i, k], 4)
            row["raw_emotion"] = CLASSES[int(raw_probs[i].argmax())]
        rows.append(row)
    return rows



def gap_records(gap: StreamGap, *, raw: bool = False, source_name: str | None = None) -> list[dict]:
    """The row that marks a live stream's gap (a drop, and a reconnect unless it never came back): ``source`` and
    ``time_s`` (the last frame before the drop) set, ``frame`` and every face field empty; the next row is the first
    frame after the stream came back. JSON Lines also gets ``"gap": {"start_s", "end_s", "duration_s", "reason"}``
    (``end_s`` null: the stream never came back)."""
    row: dict[str, Any] = {c: None for c in columns(raw)}
    row["source"] = source_name if source_name is not None else gap.source
    row["time_s"] = _r(gap.start_s, 3) if gap.start_s is not None else None
    row["gap"] = {"start_s": row["time_s"], "end_s": _r(gap.end_s, 3) if gap.end_s is not None else None,
                  "duration_s": _r(gap.duration_s, 3) if gap.duration_s is not None else None, "reason": gap.reason}
    return [row]


def _unwritable_reason(folder: Path) -> str:
    """Why ``folder`` cannot be written, in the words the OS uses for a failed write (as other outputs report it)."""
    import errno

    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
    except (OSError, AttributeError):  # no statvfs (Windows)
        pass
    return os.strerror(errno.EACCES)


def prepare_output_path(path: Path, what: str, *, written_at_end: bool = False) -> Path:
    """The output path, its folder created; a directory (or, for an output ``written_at_end`` such as a summary or
    report, a folder that cannot be written) is refused now, before any work, with one line."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    if written_at_end and not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write {what} {path}: {_unwritable_reason(path.parent)}")
    return path


class Sink:
    """Base: context manager; ``append`` opens on first use.

    A sink that writes a file keeps its :class:`~rtfer.sinks.atomic.AtomicPath` in ``output``: the file is written
    under a temporary name and renamed into place when the sink closes (``output.written``), or removed when a write
    failed (``output.error``)."""

    output = None  # AtomicPath | None

    def __init__(self) -> None:
        self._opened = False
        self._closed = False

    def open(self) -> Sink:
        self._opened = True
        return self

    def append(self, result: FrameResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def _ensure_open(self) -> None:
        if self._closed:
            raise OutputError(f"{type(self).__name__} is closed")
        if not self._opened:
            self.open()

    def __enter__(self) -> Sink:
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
