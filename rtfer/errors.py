"""Exceptions that the CLI turns into one-line errors."""
from __future__ import annotations

import re

#: The longest :func:`one_line` text (a manifest cell, a status line).
MAX_ERROR_CHARS = 500
#: scheme:// then the user-info: everything up to the LAST "@" before the host (the authority ends at the first
#: "/", "?", "#" or whitespace; FFmpeg splits a URL the same way), so a password holding "@" or ":" is hidden whole.
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@")


class RtferError(Exception):
    """Base for errors a user can act on (bad input, bad bundle, missing extra)."""


class InputError(RtferError):
    """An input path, file or camera that cannot be read."""


class BundleError(RtferError):
    """A model bundle that is missing, malformed or inconsistent."""


class BackendError(RtferError):
    """A backend or device that is unavailable."""


class OutputError(RtferError):
    """An output path that cannot be written."""


def missing_extra(package: str, extra: str) -> ImportError:
    """ImportError naming the extra that provides ``package``."""
    return ImportError(f"{package} is required for this feature: pip install 'rtfer[{extra}]'")


#: Query parameters that IP cameras take credentials in (``rtsp://cam/live?user=admin&password=...``).
_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pwd|pass|secret|token|access_token|auth|apikey|api_key|key)=)"
                           r"[^&#\s]*", re.IGNORECASE)


def redact_url(text: str) -> str:
    """Hide the user-info (``user:password@``) of every URL in ``text``, up to the last ``@`` before the host:
    ``rtsp://alice:p@ss@cam/1`` -> ``rtsp://***@cam/1``; and the value of credential query parameters
    (``?password=...`` -> ``?password=***``). Used for every source name, message and log line that can carry a
    stream URL."""
    text = _USERINFO.sub(r"\1***@", str(text))
    return _SECRET_QUERY.sub(r"\1***", text) if "=" in text else text


def one_line(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """An exception as one short line for a message, a log or a manifest cell: whitespace collapsed, URL
    credentials hidden, at most ``limit`` characters, and the type named unless it is one of ours (an RtferError's
    message is written for the user)."""
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    elif not isinstance(exc, RtferError):
        text = f"{type(exc).__name__}: {text}"
    return redact_url(text)[:limit]


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a batch run. ``finished`` videos of the ``total`` this run had to do were done
    (``failed`` of them failed) and are in the ``manifest``; the others were stopped part-way or never started, and
    nothing of them was kept, so the same command run again does them (finished videos are skipped)."""

    def __init__(self, finished: int, failed: int, total: int, manifest: str) -> None:
        super().__init__("interrupted")
        self.finished, self.failed, self.total, self.manifest = finished, failed, total, manifest

    def describe(self) -> str:
        left = self.total - self.finished
        done = f"{self.finished} of {self.total} videos finished" + (f" ({self.failed} failed)" if self.failed else "")
        text = f"rtfer: interrupted; {done}, recorded in {self.manifest}"
        if left:
            text += (f"; {left} {'was' if left == 1 else 'were'} stopped part-way or not started, with nothing kept: "
                     "run the same command again to do " + ("it" if left == 1 else "them"))
        return text


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run, after its outputs were finalised: ``written`` lists ``(path, what)`` of the
    outputs renamed into place (complete up to the last processed frame), ``not_written`` ``(path, what, reason)``
    of those that are not there."""

    def __init__(self, written=(), not_written=()) -> None:
        super().__init__("interrupted")
        self.written = list(written)
        self.not_written = list(not_written)
