"""Batch analysis of many videos: one CSV per video mirrored under an output folder, a resumable run manifest,
failure isolation per video, and three executors for the same per-video function (in-process, a local process
pool, a Ray cluster).

Why N pipelines and not one shared inference process: see docs/batch.md (measured with
benchmarks/batch_throughput.py). Each worker process owns one :class:`rtfer.pipeline.Pipeline` (bundle and
detector loaded once) and runs its videos one after another; the ONNX Runtime thread count per worker is set so that
N workers do not oversubscribe the cores.

Modules, each importing only those before it: :mod:`~rtfer.batch.common` (task, result, worker set-up),
:mod:`~rtfer.batch.discovery` (inputs and mirrored output paths), :mod:`~rtfer.batch.manifest` (the resumable
manifest), :mod:`~rtfer.batch.worker` (the per-video function and its cached pipeline),
:mod:`~rtfer.batch.executors` (in process, process pool), :mod:`~rtfer.batch.ray` (Ray),
:mod:`~rtfer.batch.plan` (to do and skipped), :mod:`~rtfer.batch.summary` (totals) and :mod:`~rtfer.batch.driver`
(:func:`run_batch`). This package re-exports their public names; to replace a function for a test, patch it in the
module that calls it (e.g. ``rtfer.batch.worker.get_pipeline``).
"""
from __future__ import annotations

from rtfer.batch.common import (FATAL_ERRORS, ORT_THREADS_ENV, ProcessFn, VideoResult, VideoTask, failed_result,
                                init_worker, now)
from rtfer.batch.discovery import discover_inputs, output_path
from rtfer.batch.driver import run_batch, write_batch_index
from rtfer.batch.executors import threads_per_worker
from rtfer.batch.manifest import FINISHED_STATUSES, MANIFEST_COLUMNS, MANIFEST_NAME, Manifest
from rtfer.batch.plan import BatchPlan, index_path, plan_batch
from rtfer.batch.summary import BatchSummary
from rtfer.batch.worker import get_pipeline, process_video

__all__ = ["FATAL_ERRORS", "FINISHED_STATUSES", "MANIFEST_COLUMNS", "MANIFEST_NAME", "ORT_THREADS_ENV", "BatchPlan",
           "BatchSummary", "Manifest", "ProcessFn", "VideoResult", "VideoTask", "discover_inputs", "failed_result",
           "get_pipeline", "index_path", "init_worker", "now", "output_path", "plan_batch", "process_video",
           "run_batch", "threads_per_worker", "write_batch_index"]
