"""What every part of batch mode shares: the per-video task and result, the per-video function's type, which errors
stop a batch, and the worker set-up. It imports no other batch module, so the executors never reach back into the
driver."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from rtfer.errors import MAX_ERROR_CHARS, RtferError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtfer.pipeline import AnalyzeOptions

ORT_THREADS_ENV = "RTFER_ORT_THREADS"
#: Errors that would fail every video the same way (bad bundle or backend, a missing module): they stop the batch.
FATAL_ERRORS = (RtferError, ImportError)


@dataclass
class VideoTask:
    """One video to analyse; plain strings so it pickles the same for a process pool and for Ray."""

    input: str
    output: str
    raw: bool = False
    report: str = ""  # the video's HTML report path ("" = none)


@dataclass
class VideoResult:
    """The outcome of one video, one manifest row."""

    input: str
    output: str
    status: str  # "ok" | "partial" | "failed"
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    finished_at: str = ""

    def row(self) -> dict[str, str]:
        return {"input": self.input, "output": self.output, "frames": str(self.frames), "faces": str(self.faces),
                "seconds": f"{self.seconds:.3f}", "fps": f"{self.fps:.2f}", "status": self.status,
                "error": self.error, "finished_at": self.finished_at}


#: The per-video function every executor runs: ``rtfer.batch.worker.process_video`` unless a caller passes its own.
ProcessFn = Callable[[VideoTask, "AnalyzeOptions"], VideoResult]


def now() -> str:
    """A manifest timestamp (UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def failed_result(task: VideoTask, error: str) -> VideoResult:
    """The manifest row of a video that failed with ``error`` (one line, see :func:`rtfer.errors.one_line`)."""
    return VideoResult(task.input, task.output, "failed", error=error[:MAX_ERROR_CHARS], finished_at=now())


def init_worker(threads: int, parent_pid: int | None = None) -> None:
    """Cap a worker's compute threads before its Pipeline is built (pool initializer, start of a Ray task).

    ``parent_pid`` (the pool's driver): the worker dies with it, even when the driver is killed with ``kill -9``
    (:func:`die_with_parent`), so no orphan goes on writing outputs after its batch is gone."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    os.environ[ORT_THREADS_ENV] = str(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover - opencv is a core dependency
        pass


#: True while a pool worker runs a video (:func:`run_task`): SIGTERM then stops the video (its temporary outputs are
#: removed) instead of ending the idle process.
_IN_TASK = False
_STOPPING = False  # the driver asked this worker to stop: it ends once its video has unwound


def init_pool_worker(threads: int, parent_pid: int | None = None) -> None:
    """:func:`init_worker` for a process-pool worker, which also leaves Ctrl-C to its driver (a terminal sends SIGINT
    to the whole process group; the driver decides) and turns SIGTERM, the driver's stop, into a clean end."""
    import signal

    init_worker(threads, parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)


def _stop_worker(signum, frame) -> None:
    global _STOPPING
    _STOPPING = True
    if _IN_TASK:
        raise KeyboardInterrupt  # unwinds the video: its temporary outputs are removed, the final paths untouched
    os._exit(0)  # idle: nothing to clean up


def run_task(fn: ProcessFn, task: VideoTask, options: AnalyzeOptions) -> VideoResult:
    """``fn(task, options)`` in a pool worker, marked as running for the SIGTERM handler."""
    global _IN_TASK
    _IN_TASK = True
    try:
        return fn(task, options)
    finally:
        _IN_TASK = False
        if _STOPPING:  # the video has unwound (a stopped run returns its partial result): the driver has gone on
            os._exit(0)


#: How often a worker's watchdog thread checks that its driver is still there (seconds).
WATCHDOG_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` dies: on Linux the kernel sends SIGKILL at once (``prctl
    PR_SET_PDEATHSIG``); everywhere a daemon thread also checks every :data:`WATCHDOG_S` seconds that the parent is
    still this process's parent (a dead parent's children are re-parented) and exits otherwise. A parent that died
    before this call is caught by the first check."""
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        import time

        while True:
            time.sleep(WATCHDOG_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="rtfer-parent-watchdog", daemon=True).start()
