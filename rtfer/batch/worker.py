"""The per-video work every executor runs (in the driver, a pool worker or a Ray worker): one cached Pipeline per
process and :func:`process_video`, which writes a video's CSV (and report) atomically via a temp file."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rtfer.batch.common import ORT_THREADS_ENV, VideoResult, VideoTask, now
from rtfer.errors import one_line

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtfer.pipeline import AnalyzeOptions, Pipeline

log = logging.getLogger(__name__)


_PIPELINE_CACHE: dict[str, Pipeline] = {}


def get_pipeline(options: AnalyzeOptions) -> Pipeline:
    """This process's Pipeline for ``options``, built on first use and reused for every later video.

    One entry only: a worker serves one batch (one set of options) at a time, and a bundle is not small.
    """
    from rtfer.pipeline import Pipeline

    key = repr(options)
    pipe = _PIPELINE_CACHE.get(key)
    if pipe is None:
        _PIPELINE_CACHE.clear()
        log.info("pid %d: loading the pipeline (%s threads for onnxruntime)", os.getpid(),
                 os.environ.get(ORT_THREADS_ENV, "default"))
        pipe = Pipeline(options)
        _PIPELINE_CACHE[key] = pipe
    return pipe


def process_video(task: VideoTask, options: AnalyzeOptions) -> VideoResult:
    """Analyse one video into its CSV, atomically: write a temp file, rename on success.

    Errors about this video (unreadable input, unwritable output, a decoder or model failure on its frames) are
    returned as a failed result so the batch goes on. Errors building the pipeline (bad bundle, missing backend)
    and ImportErrors are raised: they would fail every video the same way, and the driver stops the batch on them.
    """
    from rtfer.run import process_file
    from rtfer.sinks.atomic import remove_stale_temps, temp_path

    pipeline = get_pipeline(options)  # raises RtferError on a bad bundle / backend: fatal for the batch
    output = Path(task.output)
    tmp = temp_path(output)
    report = Path(task.report) if task.report else None
    report_tmp = temp_path(report) if report is not None else None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(output)  # what a killed worker left for this video (never a live run's)
        if report is not None:
            remove_stale_temps(report)
        stats = process_file(task.input, tmp, options, pipeline=pipeline, raw=task.raw, progress=False,
                             report=report_tmp, command=f"rtfer analyze (batch) {task.input}" if report else None)
        if stats.status == "ok":
            if report is not None:
                os.replace(report_tmp, report)
            os.replace(tmp, output)
    except ImportError:
        raise  # a missing module or extra fails every video the same way: fatal for the batch
    except Exception as exc:  # one video's failure never stops the batch
        log.debug("%s failed", task.input, exc_info=True)
        return VideoResult(task.input, task.output, "failed", error=one_line(exc), finished_at=now())
    finally:
        for leftover in (tmp, report_tmp):
            if leftover is not None and leftover.exists():
                try:
                    leftover.unlink()
                except OSError:
                    pass
    # "partial" = the run was cancelled before the end: its output was not renamed into place, so a resume redoes it
    return VideoResult(task.input, task.output, "ok" if stats.status == "ok" else "partial", frames=int(stats.frames),
                       faces=int(stats.faces), seconds=float(stats.seconds), fps=float(stats.fps),
                       error="" if stats.status == "ok" else "interrupted before the end; rerun to redo it",
                       warnings=list(stats.warnings), finished_at=now())
