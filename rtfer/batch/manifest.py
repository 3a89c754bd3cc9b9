"""The run manifest (OUT_DIR/manifest.csv): one row per finished attempt, appended and flushed per video; on resume
the last row per input wins and only ``FINISHED_STATUSES`` rows count as done."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO

from rtfer.batch.common import VideoResult
from rtfer.batch.discovery import abs_path
from rtfer.errors import OutputError

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("input", "output", "frames", "faces", "seconds", "fps", "status", "error", "finished_at")
#: Manifest statuses that count as finished on resume (the output was renamed into place after a complete run).
FINISHED_STATUSES = frozenset({"ok"})


class Manifest:
    """The run manifest: one CSV row per finished attempt, appended and flushed per video so a crash keeps it.

    On resume the last row for an input wins. A truncated last line (the crash hit mid-write) is ignored.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._writer: csv.DictWriter | None = None

    def read(self) -> dict[str, dict[str, str]]:
        """The last row per input (keyed by the absolute input path)."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return {}
        rows: dict[str, dict[str, str]] = {}
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
                raise OutputError(f"{self.path} is not an rtfer batch manifest (columns {reader.fieldnames}); "
                                  "choose another --manifest or out dir")
            for row in reader:
                if None in row or any(row.get(c) is None for c in MANIFEST_COLUMNS) or not row["finished_at"]:
                    continue  # torn line from a crash
                rows[path_key(row["input"])] = row
        return rows

    def open(self) -> Manifest:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.is_file() or self.path.stat().st_size == 0
            if not new:
                with open(self.path, "rb") as f:  # a torn last line must not glue onto the next row
                    f.seek(-1, os.SEEK_END)
                    needs_newline = f.read(1) not in (b"\n", b"\r")
            self._file = open(self.path, "a", newline="", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write the manifest {self.path}: {exc.strerror or exc}") from None
        if not new and needs_newline:
            self._file.write("\r\n")
        self._writer = csv.DictWriter(self._file, fieldnames=MANIFEST_COLUMNS)
        if new:
            self._writer.writeheader()
            self._flush()
        return self

    def append(self, result: VideoResult) -> None:
        if self._writer is None:
            raise RuntimeError("Manifest.append before open()")
        self._writer.writerow(result.row())
        self._flush()

    def _flush(self) -> None:
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError:  # some network file systems refuse fsync; the flush still reached the OS
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None

    def __enter__(self) -> Manifest:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def path_key(path: str | Path) -> str:
    """How the manifest keys an input or output path (absolute, normalised, symlinks kept)."""
    return str(abs_path(path))
