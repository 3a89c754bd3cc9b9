"""Advisory locks that keep two runs off one output: :class:`PathLock`.

A run holds a lock on each of its outputs (a batch run on its manifest and its out dir) from before the first frame
until its files are renamed into place. The lock is ``fcntl.flock`` on a hidden lock file beside the path
(``.NAME.rtfer-lock``) that holds the holder's pid and command line, so a second run is refused with one line naming
the first. The operating system drops the lock when its holder dies, ``kill -9`` included: a lock file left behind
by a killed run locks nothing, and the next run takes it over. Within one process the locks are re-entrant (the CLI
takes them before loading the models, the run layer again around the run). Where ``fcntl`` is missing (Windows),
paths are not locked.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from rtfer.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_HELD: dict[str, list] = {}  # lock file -> [count, fd], this process's locks
_GUARD = threading.Lock()


def lock_file_for(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``.NAME.rtfer-lock`` beside it."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    return path.with_name(f".{path.name}.rtfer-lock")


def holder_command() -> str:
    """This process's command line as a lock file records it (URL credentials hidden)."""
    try:
        from rtfer.capture import redact_url
    except ImportError:  # pragma: no cover
        def redact_url(text: str) -> str:
            return text
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("rtfer", "__main__.py", "cli.py"):
        argv[0] = "rtfer"
    return redact_url(" ".join(argv))[:300]


def read_holder(lock_file: Path) -> tuple[int | None, str]:
    """``(pid, command)`` recorded in a lock file (None, "" when unreadable)."""
    try:
        lines = lock_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None, ""
    try:
        pid = int(lines[0]) if lines else None
    except ValueError:
        pid = None
    return pid, lines[1] if len(lines) > 1 else ""


class PathLock:
    """An exclusive lock on ``path`` for this run; refused with one :class:`~rtfer.errors.OutputError` line when
    another process holds it. ``what`` names the path in that line; ``lock_file`` overrides where the lock lives
    (default :func:`lock_file_for`)."""

    def __init__(self, path: str | os.PathLike, what: str = "output", *, lock_file: str | os.PathLike | None = None,
                 hint: str = "wait for it to finish or choose another output path") -> None:
        self.path = Path(path)
        self.what = what
        self.lock_file = Path(lock_file) if lock_file is not None else lock_file_for(path)
        self._default_lock_file = lock_file is None
        self.hint = hint
        self._held = False

    def acquire(self) -> PathLock:
        if fcntl is None or self._held:
            return self
        if self._default_lock_file:
            from rtfer.sinks.atomic import is_special

            if is_special(self.path):
                return self  # /dev/null, a FIFO: nothing to protect, and no lock file beside it
        key = str(self.lock_file)
        with _GUARD:
            entry = _HELD.get(key)
            if entry is not None:
                entry[0] += 1
                self._held = True
                return self
            fd = self._lock()
            _HELD[key] = [1, fd]
        self._held = True
        return self

    def _lock(self) -> int:
        while True:
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot write {self.what} {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid, command = read_holder(self.lock_file)
                who = f"pid {pid}" + (f": {command}" if command else "") if pid else "another process"
                raise OutputError(f"{self.what} {self.path} is in use by another rtfer run ({who}); "
                                  f"{self.hint}") from None
            try:  # the file we locked may have been removed by its last holder meanwhile: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{holder_command()}\n".encode("utf-8", "replace"))
            return fd

    def release(self) -> None:
        if fcntl is None or not self._held:
            return
        self._held = False
        key = str(self.lock_file)
        with _GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] > 0:
                return
            del _HELD[key]
            try:
                os.unlink(self.lock_file)  # while still locked: a waiting run then locks a fresh file
            except OSError:
                pass
            os.close(entry[1])

    def __enter__(self) -> PathLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
