"""Text timelines: :class:`CSVSink` and :class:`JSONLSink`, one row per face per frame in the :func:`columns` schema,
written incrementally in whole-frame batches (every :data:`FLUSH_ROWS` rows or :data:`FLUSH_SECONDS` seconds)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rtfer.errors import OutputError
from rtfer.labels import CLASSES
from rtfer.sinks.atomic import AtomicPath
from rtfer.sinks.base import Sink, columns, gap_records, prepare_output_path, result_records
from rtfer.types import FrameResult, StreamGap

FLUSH_ROWS = 50
FLUSH_SECONDS = 0.5


def _fmt(v: Any, nd: int | None) -> str:
    if v is None:
        return ""
    if nd is not None and isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


_DECIMALS: dict[str, int] = {"time_s": 3, "x1": 1, "y1": 1, "x2": 1, "y2": 1, "det_score": 4, "confidence": 4,
                             "valence": 4, **{c: 4 for c in CLASSES}, **{f"raw_{c}": 4 for c in CLASSES}}



class _TextTimelineSink(Sink):
    """Shared incremental, batch-flushed writing for CSV and JSONL."""

    what = "timeline"

    def __init__(self, path: str | os.PathLike, raw: bool = False, source_name: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.raw = raw
        self.source_name = source_name
        self.rows_written = 0
        self._fh: io.TextIOBase | None = None
        self._buffer: list[str] = []
        self._buffered_rows = 0
        self._last_flush = time.monotonic()

    def _open_file(self, mode: str) -> None:
        """Open the temporary file (``mode`` "a": a copy of the existing file, continued)."""
        path = prepare_output_path(self.path, self.what)
        self.output = AtomicPath(path, self.what)
        tmp = self.output.begin()
        try:
            if mode == "a":
                shutil.copyfile(path, tmp)
            self._fh = open(tmp, mode, newline="", encoding="utf-8")
        except OSError as exc:
            self.output.discard(exc.strerror or str(exc))
            raise OutputError(f"cannot write {self.what} {path}: {exc.strerror or exc}") from None
        self.path = path
        self._opened = True

    def _lines(self, records: list[dict]) -> str:
        raise NotImplementedError

    def append(self, result: FrameResult) -> None:
        """Queue this frame's rows; write and flush them when 50 rows or 0.5 s have accumulated."""
        self._queue(result_records(result, raw=self.raw, source_name=self.source_name))
        if self._buffered_rows >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def append_gap(self, gap: StreamGap) -> None:
        """Write the row that marks a live stream's gap (:func:`~rtfer.sinks.base.gap_records`), flushed at once."""
        self._queue(gap_records(gap, raw=self.raw, source_name=self.source_name))
        self.flush()

    def _queue(self, records: list[dict]) -> None:
        self._ensure_open()
        if self._fh is None:
            raise OutputError(f"cannot write {self.what} {self.path}: {self.output.error if self.output else 'closed'}")
        self._buffer.append(self._lines(records))
        self._buffered_rows += len(records)

    def flush(self) -> None:
        """Write the buffered whole frames and flush them to the OS."""
        if self._fh is None:
            return
        if self._buffer:
            try:
                self._fh.write("".join(self._buffer))
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)
            self.rows_written += self._buffered_rows
            self._buffer.clear()
            self._buffered_rows = 0
        self._last_flush = time.monotonic()

    def _fail(self, exc: OSError):
        """A write failed (a full disk): the temporary file is dropped, the final name is never written."""
        reason = exc.strerror or str(exc)
        fh, self._fh = self._fh, None
        try:
            fh.close()
        except OSError:
            pass
        self._buffer.clear()
        self.output.discard(reason)
        raise OutputError(f"cannot write {self.what} {self.path}: {reason}") from None

    def close(self) -> None:
        """Write what is buffered and rename the file into place (nothing is renamed after a failed write)."""
        if self._closed:
            return
        self._closed = True
        if self._fh is None:
            return
        self.flush()
        try:
            self._fh.close()
        except OSError as exc:
            self._fh = None
            self.output.discard(exc.strerror or str(exc))
            raise OutputError(f"cannot write {self.what} {self.path}: {exc.strerror or exc}") from None
        self._fh = None
        if self.output.error:  # the run did not start (another output could not be opened): nothing to keep
            self.output.discard()
        else:
            self.output.commit()


class CSVSink(_TextTimelineSink):
    """Per-face-per-frame CSV timeline in the DESIGN.md schema (``raw=True`` adds ``raw_<class>``, ``raw_emotion``).

    ``append=True`` continues an existing file; its header must match the schema exactly, else OutputError.
    """

    what = "CSV"

    def __init__(self, path: str | os.PathLike, raw: bool = False, source_name: str | None = None, *,
                 append: bool = False) -> None:
        super().__init__(path, raw, source_name)
        self.append_mode = append
        self.columns = columns(raw)

    def open(self) -> CSVSink:
        if self._opened:
            return self
        path = Path(self.path).expanduser()
        header = ",".join(self.columns)
        if self.append_mode and path.is_file() and path.stat().st_size > 0:
            with open(path, newline="", encoding="utf-8") as fh:
                existing = next(csv.reader(fh), [])
            if tuple(existing) != self.columns:
                extra = sorted(set(existing) ^ set(self.columns))
                raise OutputError(f"cannot append to {path}: its header does not match the timeline schema"
                                  f"{' (differs in ' + ', '.join(extra[:6]) + ')' if extra else ' (column order)'}")
            self._open_file("a")
        else:
            self._open_file("w")
            try:
                self._fh.write(header + "\n")
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)
        return self

    def _lines(self, records: list[dict]) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for rec in records:
            writer.writerow([_fmt(rec[c], _DECIMALS.get(c)) for c in self.columns])
        return out.getvalue()


class JSONLSink(_TextTimelineSink):
    """One JSON object per face per frame (same fields as the CSV; empty fields are null)."""

    what = "JSONL"

    def open(self) -> JSONLSink:
        if not self._opened:
            self._open_file("w")
        return self

    def _lines(self, records: list[dict]) -> str:
        return "".join(json.dumps(rec, separators=(",", ":")) + "\n" for rec in records)
