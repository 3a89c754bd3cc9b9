"""Sinks: CSV / JSONL timelines, annotated video and the end-of-run summary (table + PNG).

Every sink is a context manager with ``open()``, ``append(result: FrameResult)`` and ``close()``. Timelines are
written incrementally in whole-frame batches (at most every ~0.5 s or 50 rows), so an interrupted run leaves a
valid file up to the last flushed frame. Untracked faces (track id -1) get their index within the frame as
``face_id``; a frame without faces gets one row whose face fields are empty.

Every file is written under a temporary name beside its final path and renamed into place when the sink closes
(:mod:`~rtfer.sinks.atomic`): a torn file never appears under a final name, and after a failed write (a full disk)
the final name keeps what it held before.

Modules: :mod:`~rtfer.sinks.atomic` (temporary files, the rename, telling rtfer's outputs from other files),
:mod:`~rtfer.sinks.base` (the Sink base, output paths, the timeline schema and rows),
:mod:`~rtfer.sinks.timeline` (CSV and JSONL), :mod:`~rtfer.sinks.video` (the annotated video, with its audio),
:mod:`~rtfer.sinks.summary` (the bounded accumulator, the summary table, SummarySink) and :mod:`~rtfer.sinks.plot`
(the summary PNG). This package re-exports their public names; a test that patches a constant patches it in the
module that reads it (e.g. ``rtfer.sinks.timeline.FLUSH_SECONDS``).
"""
from __future__ import annotations

from rtfer.sinks.base import CSV_COLUMNS, RAW_COLUMNS, Sink, columns, prepare_output_path, result_records
from rtfer.sinks.plot import emotion_runs, video_figure, write_summary_png
from rtfer.sinks.summary import FaceSummary, Summary, SummaryAccumulator, SummarySink, run_title, summary_table
from rtfer.sinks.timeline import CSVSink, JSONLSink
from rtfer.sinks.video import AnnotatedVideoSink

__all__ = ["CSV_COLUMNS", "RAW_COLUMNS", "AnnotatedVideoSink", "CSVSink", "FaceSummary", "JSONLSink", "Sink", "Summary",
           "SummaryAccumulator", "SummarySink", "columns", "emotion_runs", "prepare_output_path", "result_records",
           "run_title", "summary_table", "video_figure", "write_summary_png"]
