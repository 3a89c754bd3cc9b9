"""Outputs that never exist half-written under their final name.

Every file output (CSV, JSON Lines, annotated video, summary plot, HTML report) is written to a hidden temporary file
beside its final path (:func:`temp_path`: ``.NAME.PID.partSUFFIX``, same folder, so the rename is atomic, and same
suffix, so FFmpeg and matplotlib pick the same format) and renamed into place by :meth:`AtomicPath.commit` when the
sink is finalised: at the end of the run, or after Ctrl-C with what was written up to then. A write that fails (a full
disk) removes the temporary file, so no torn file appears under the final name and an earlier file there is kept.

Outputs carry a mark of their writer (:data:`MARK`: the CSV/JSONL schema, the video's ``comment`` tag, the plot's
metadata, the report's ``generator`` meta tag), so :func:`written_by_rtfer` can tell an earlier rtfer output, which a
new run replaces, from an unrelated file, which it does not replace without ``--overwrite``.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from rtfer.errors import OutputError

log = logging.getLogger(__name__)

#: The writer mark in binary outputs (video comment tag, plot metadata).
MARK = "written by rtfer"
#: Video containers the annotated video can be written to (H.264 or MPEG-4 video, a comment tag).
VIDEO_FORMATS = (".mp4", ".mov", ".m4v", ".mkv", ".avi")


def temp_path(final: str | os.PathLike, pid: int | None = None) -> Path:
    """The hidden sibling ``.STEM.PID.partSUFFIX`` an output is written to before it is renamed to ``final``."""
    final = Path(final)
    return final.with_name(f".{final.stem}.{os.getpid() if pid is None else pid}.part{final.suffix}")


def is_special(path: str | os.PathLike) -> bool:
    """An existing path that is neither a regular file nor a folder (``/dev/null``, a FIFO): outputs are written to it
    directly, without a temporary file or a lock."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    import stat

    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts; a pid we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def stale_temps(final: str | os.PathLike) -> list[Path]:
    """Files of ``final`` left by processes that no longer run (killed with ``kill -9``, a power cut): its temporary
    file ``.STEM.PID.partSUFFIX``, and what was made beside that one when it was itself a run's output (a batch
    worker writes a video's CSV there): its temporary file ``..STEM.PID.part.PID.partSUFFIX`` and lock file
    ``..STEM.PID.partSUFFIX.rtfer-lock``.

    A live process's files are never listed: another run may be writing them."""
    final = Path(final)
    pattern = re.compile(r"^\.\.?" + re.escape(final.stem) + r"\.(\d+)\.part(\.\d+\.part)?" + re.escape(final.suffix)
                         + r"(\.rtfer-lock)?$")
    found = []
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    for name in names:
        m = pattern.match(name)
        if m and int(m[1]) != os.getpid() and not pid_alive(int(m[1])):
            found.append(final.parent / name)
    return found


def remove_stale_temps(final: str | os.PathLike) -> None:
    for stale in stale_temps(final):
        try:
            stale.unlink()
            log.info("removed %s, left by a run that was killed", stale)
        except OSError:
            pass


class AtomicPath:
    """One output's final path and the temporary file it is written to.

    :meth:`begin` returns the temporary path (stale temporary files of dead runs removed); :meth:`commit` renames it
    into place; :meth:`discard` removes it. ``written`` tells whether the final file is this run's; ``error`` says why
    not, when it is not.
    """

    def __init__(self, final: str | os.PathLike, what: str) -> None:
        self.final = Path(final)
        self.what = what
        self.tmp = temp_path(self.final)
        self.written = False
        self.empty = False  # nothing to write (a video without frames): not written, not an error
        self.error: str | None = None

    def begin(self) -> Path:
        if is_special(self.final):  # /dev/null, a FIFO: written as it is, never replaced by a renamed file
            self.tmp = self.final
            return self.tmp
        remove_stale_temps(self.final)
        self.tmp = temp_path(self.final)
        return self.tmp

    def commit(self) -> Path:
        """Rename the temporary file to the final path (atomic on one file system)."""
        if self.tmp == self.final:
            self.written = True
            return self.final
        try:
            os.replace(self.tmp, self.final)
        except OSError as exc:
            self.discard(f"{exc.strerror or exc}")
            raise OutputError(f"cannot write {self.what} {self.final}: {exc.strerror or exc}") from None
        self.written = True
        self.error = None
        return self.final

    def discard(self, reason: str | None = None) -> None:
        """Remove the temporary file; the final path keeps whatever it held before (or nothing)."""
        if reason and not self.error:
            self.error = reason
        if self.tmp == self.final:
            return  # a device or FIFO written directly
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # pragma: no cover - a folder that turned read-only
            log.warning("cannot remove %s: %s", self.tmp, exc.strerror or exc)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str) -> Path:
    """Write ``data`` to ``path`` through a temporary file (nothing under ``path`` on failure)."""
    out = AtomicPath(path, what)
    try:
        with open(out.begin(), "wb") as fh:
            fh.write(data)
    except OSError as exc:
        out.discard()
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    return out.commit()


# ------------------------------------------------------------------------------------------------- recognition
def written_by_rtfer(path: str | os.PathLike) -> bool:
    """Whether the existing file ``path`` is an output of an earlier rtfer run (which a new run may replace).

    CSV: its header is the timeline schema; JSON Lines: empty, or its first line is a timeline record; HTML: the
    ``generator`` meta tag names rtfer; video: the container's comment tag; plots and anything else: the mark in the
    file's first or last 64 KiB (PNG/JPEG text chunks come first, PDF metadata last)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.readline().startswith("source,frame,time_s,face_id,")
        if suffix == ".jsonl":
            with open(path, encoding="utf-8", errors="replace") as fh:
                first = fh.readline()
            if not first.strip():
                return path.stat().st_size == 0
            try:
                record = json.loads(first)
            except ValueError:
                return False
            return isinstance(record, dict) and {"source", "frame", "time_s", "face_id"} <= set(record)
        if suffix in (".html", ".htm"):
            with open(path, encoding="utf-8", errors="replace") as fh:
                head = fh.read(4096)
            return re.search(r'<meta name="generator" content="rtfer\b', head) is not None
        if suffix in VIDEO_FORMATS:
            return _video_marked(path)
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(65536)
            if size > 65536:
                fh.seek(max(65536, size - 65536))
                head += fh.read()
        return MARK.encode() in head
    except OSError:
        return False


def _video_marked(path: Path) -> bool:
    try:
        import av

        with av.open(str(path)) as container:
            return any(k.lower() == "comment" and v == MARK for k, v in container.metadata.items())
    except Exception:  # noqa: BLE001 - not a readable video: not ours
        return False


def replaceable(path: str | os.PathLike) -> bool:
    """Whether an output may be written at ``path`` without ``--overwrite``: nothing is there, an empty file (``mktemp``
    makes one; it holds nothing to lose), a device such as ``/dev/null`` (written, not replaced), or an earlier rtfer
    output (:func:`written_by_rtfer`). A directory counts too: it is refused elsewhere, with its own message."""
    path = Path(path).expanduser()
    try:
        if not path.exists() or path.is_dir() or is_special(path) or path.stat().st_size == 0:
            return True
    except OSError:
        return True  # unreadable: writing it fails with its own message
    return written_by_rtfer(path)


def check_replace(path: str | os.PathLike, what: str, *, overwrite: bool = False) -> None:
    """Refuse to replace an existing file that rtfer did not write, unless ``overwrite`` (one line, before any work)."""
    path = Path(path).expanduser()
    if overwrite or replaceable(path):
        if path.is_file() and path.stat().st_size > 0:
            log.info("replacing %s", path)
        return
    raise OutputError(f"{what} {path} exists and was not written by rtfer: pass --overwrite to replace it, or "
                      "choose another path")
