"""Batch analysis of many videos: one CSV per video mirrored under an output folder, a resumable run manifest,
failure isolation per video, and three executors for the same per-video function (in-process, a local process
pool, a Ray cluster).

Why N pipelines and not one shared inference process: see docs/batch.md (measured with
benchmarks/batch_throughput.py). Each worker process owns one :class:`rtfer.pipeline.Pipeline` (bundle and
detector loaded once) and runs its videos one after another; the ONNX Runtime thread count per worker is set so that
N workers do not oversubscribe the cores.
"""
from __future__ import annotations

import csv
import glob
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from rtfer._batch_common import (FATAL_ERRORS, ORT_THREADS_ENV, ProcessFn, VideoResult, VideoTask, failed_result,
                                 init_worker, now)
from rtfer.capture import VIDEO_EXTENSIONS  # what a directory or glob expands to (one list for the CLI and us)
from rtfer.errors import InputError, OutputError, one_line

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtfer.pipeline import AnalyzeOptions, Pipeline

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("input", "output", "frames", "faces", "seconds", "fps", "status", "error", "finished_at")
#: Manifest statuses that count as finished on resume (the output was renamed into place after a complete run).
FINISHED_STATUSES = frozenset({"ok"})


# ----------------------------------------------------------------------------------------------------------------
# discovery and output paths


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern is relative to: its leading components without wildcards."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _abs(path: str | Path) -> Path:
    """An absolute, normalised path that keeps symlinks (two links to one file are two inputs)."""
    return Path(os.path.normpath(os.path.abspath(os.fspath(path))))


def _videos_under(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
                  key=lambda p: p.relative_to(folder).as_posix())


def discover_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files, directories (recursive, video extensions) and globs into ``(file, root)`` pairs.

    ``root`` is what the output tree mirrors from: the directory itself, the fixed part of a glob, or a plain file's
    parent. Order is stable (inputs in the order given, each expanded in sorted order); a file reached twice is kept
    once, with its first root. Raises InputError for an input that matches nothing.
    """
    out: list[tuple[Path, Path]] = []
    seen: set[Path] = set()

    def add(file: Path, root: Path) -> None:
        key = _abs(file)
        if key not in seen:
            seen.add(key)
            out.append((file, root))

    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found = _videos_under(path)
            if not found:
                log.warning("%s: no video files (%s) inside", path, ", ".join(sorted(VIDEO_EXTENSIONS)))
            for f in found:
                add(f, path)
        elif path.is_file():
            add(path, path.parent)
        elif glob.has_magic(text):
            root = _glob_root(os.path.expanduser(text))
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            files: list[Path] = []
            for m in map(Path, matches):
                if m.is_dir():
                    files.extend(_videos_under(m))
                elif m.is_file() and m.suffix.lower() in VIDEO_EXTENSIONS:
                    files.append(m)
            if not files:
                raise InputError(f"{text}: the pattern matches no video files")
            for f in files:
                add(f, root)
        else:
            raise InputError(f"{text}: no such file or directory")
    return out


def output_path(file: str | Path, root: str | Path, out_dir: str | Path, suffix: str = ".csv") -> Path:
    """Where ``file``'s output goes: its path relative to ``root`` mirrored under ``out_dir``, with ``suffix``."""
    file, root = Path(file), Path(root)
    try:
        rel = _abs(file).relative_to(_abs(root))
    except ValueError:
        rel = Path(file.name)
    return Path(out_dir) / rel.with_suffix(suffix)


def _temp_path(output: Path) -> Path:
    """A hidden sibling of ``output`` that a crashed run may leave behind and that never looks finished."""
    return output.with_name(f".{output.stem}.{os.getpid()}.part{output.suffix}")


def _remove_stale_temps(output: Path) -> None:
    for stale in output.parent.glob(f".{glob.escape(output.stem)}.*.part{output.suffix}"):
        try:
            stale.unlink()
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------------------------
# per-video work (runs in the driver, a pool worker or a Ray worker)


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
    from rtfer.pipeline import process_file

    pipeline = get_pipeline(options)  # raises RtferError on a bad bundle / backend: fatal for the batch
    output = Path(task.output)
    tmp = _temp_path(output)
    report = Path(task.report) if task.report else None
    report_tmp = _temp_path(report) if report is not None else None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(output)
        if report is not None:
            _remove_stale_temps(report)
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


# ----------------------------------------------------------------------------------------------------------------
# manifest


class Manifest:
    """The run manifest: one CSV row per finished attempt, appended and flushed per video so a crash keeps it.

    On resume the last row for an input wins. A truncated last line (the crash hit mid-write) is ignored.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = None
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
                rows[_key(row["input"])] = row
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

    def __exit__(self, *exc) -> None:
        self.close()


def _key(path: str | Path) -> str:
    return str(_abs(path))


# ----------------------------------------------------------------------------------------------------------------
# planning and summary


@dataclass
class BatchPlan:
    """What a run will do: the videos to process, and those skipped because a finished output exists."""

    todo: list[VideoTask]
    skipped: list[VideoTask]
    manifest: Path


def plan_batch(inputs: Iterable[str | Path], out_dir: str | Path, *, overwrite: bool = False,
               manifest: str | Path | None = None, raw: bool = False, report: str | None = None) -> BatchPlan:
    """Discover the inputs, map each to its output, and split them into to-do and already-finished.

    ``report`` (None = no reports): each video also gets an HTML report beside its CSV, and the batch an index page
    (``report`` names it; "" = OUT_DIR/index.html). A video finished earlier without its report is redone."""
    out_dir = Path(out_dir)
    manifest_path = Path(manifest) if manifest is not None else out_dir / MANIFEST_NAME
    pairs = discover_inputs(inputs)
    if not pairs:
        raise InputError("no video files found in the inputs")
    tasks: list[VideoTask] = []
    claimed: dict[Path, str] = {_abs(manifest_path): "the manifest"}
    index = _abs(index_path(out_dir, report)) if report is not None else None
    if index is not None:
        if index in claimed:
            raise InputError(f"the report index {index} would overwrite the manifest; choose another path")
        claimed[index] = "the report index page"
    for file, root in pairs:
        out = _abs(output_path(file, root, out_dir))
        html = out.with_suffix(".html") if report is not None else None
        for path in (out, html):
            if path is None:
                continue
            other = claimed.get(path)
            if other is not None:
                raise InputError(f"{file} and {other} would both write {path}; give their common parent folder as "
                                 "the input or run them separately")
            claimed[path] = str(file)
        tasks.append(VideoTask(str(_abs(file)), str(out), raw, str(html) if html is not None else ""))
    done = {} if overwrite else Manifest(manifest_path).read()
    todo, skipped = [], []
    for t in tasks:
        row = done.get(_key(t.input))
        finished = row is not None and row["status"] in FINISHED_STATUSES and Path(t.output).is_file() \
            and _key(row["output"]) == _key(t.output) and (not t.report or Path(t.report).is_file())
        (skipped if finished else todo).append(t)
    return BatchPlan(todo, skipped, manifest_path)


@dataclass
class BatchSummary:
    """Totals over a batch run (``videos_skipped`` were finished by an earlier run and not redone)."""

    videos_total: int = 0
    videos_ok: int = 0
    videos_partial: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0
    frames: int = 0
    faces: int = 0
    wall_seconds: float = 0.0
    workers: int = 1
    executor: str = "in-process"
    manifest: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    index: str = ""  # the report index page, when reports were asked

    def add(self, result: VideoResult) -> None:
        if result.status == "failed":
            self.videos_failed += 1
            self.failures.append((result.input, result.error))
            return
        if result.status == "partial":
            self.videos_partial += 1
        else:
            self.videos_ok += 1
        self.frames += result.frames
        self.faces += result.faces

    @property
    def failed(self) -> int:
        """Videos that failed in this run (what the exit status reports)."""
        return self.videos_failed

    @property
    def videos_done(self) -> int:
        """Videos analysed in this run (ok or partial)."""
        return self.videos_ok + self.videos_partial

    @property
    def videos_per_hour(self) -> float:
        return self.videos_done * 3600.0 / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every video was analysed (or skipped as finished), 1 when any failed."""
        return 1 if self.videos_failed else 0

    def status_line(self) -> str:
        if not self.videos_failed:
            return f"all {self.videos_total} videos done ({self.videos_skipped} skipped as already finished)"
        return (f"{self.videos_failed} of {self.videos_total} videos failed; their errors are in {self.manifest} "
                "(rerun the same command to retry them)")

    def table(self) -> str:
        rows = [("executor", f"{self.executor}, {self.workers} in parallel"),
                ("videos", str(self.videos_total)),
                ("  ok", str(self.videos_ok)),
                ("  partial", str(self.videos_partial)),
                ("  failed", str(self.videos_failed)),
                ("  skipped", str(self.videos_skipped)),
                ("frames", str(self.frames)),
                ("faces", str(self.faces)),
                ("wall time", f"{self.wall_seconds:.1f} s"),
                ("videos/hour", f"{self.videos_per_hour:.0f}"),
                ("frames/s", f"{self.frames_per_s:.1f}"),
                ("manifest", self.manifest)]
        if self.index:
            rows.append(("reports", self.index))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        for inp, err in self.failures[:10]:
            lines.append(f"failed: {inp}: {err}")
        if len(self.failures) > 10:
            lines.append(f"... and {len(self.failures) - 10} more failures in the manifest")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# executors



def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """ONNX Runtime intra-op threads for each of ``workers`` processes sharing ``cpus`` cores (at least 1)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


def _run_in_process(todo: list[VideoTask], options: AnalyzeOptions, fn: ProcessFn) -> Iterator[VideoResult]:
    for task in todo:
        try:
            yield fn(task, options)
        except FATAL_ERRORS:
            raise  # pipeline set-up failed or a module is missing: every video would fail the same way
        except Exception as exc:
            log.debug("%s failed", task.input, exc_info=True)
            yield failed_result(task, one_line(exc))


def _run_pool(todo: list[VideoTask], options: AnalyzeOptions, fn: ProcessFn, workers: int,
              threads: int) -> Iterator[VideoResult]:
    """A spawn-context process pool with at most ``workers`` videos in flight.

    A worker that dies (a native crash, the OOM killer) breaks a ProcessPoolExecutor for every video in flight;
    those videos are recorded as failed with that reason, a fresh pool is started, and the rest go on.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    queue = list(reversed(todo))

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                                   initargs=(threads,))

    pool = new_pool()
    in_flight: dict = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                task = queue.pop()
                in_flight[pool.submit(fn, task, options)] = task
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                task = in_flight.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken = True
                    yield failed_result(task, "a worker process died while analysing this video (native crash or out "
                                        "of memory); rerun to retry")
                except FATAL_ERRORS:
                    raise
                except Exception as exc:
                    yield failed_result(task, one_line(exc))
            if broken:
                for fut, task in list(in_flight.items()):
                    in_flight.pop(fut)
                    yield failed_result(task, "a worker process died while this video was in flight; rerun to retry")
                pool.shutdown(wait=False, cancel_futures=True)
                log.warning("a batch worker process died; starting a fresh pool for the remaining %d videos",
                            len(queue))
                pool = new_pool()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_batch(inputs: Iterable[str | Path], out_dir: str | Path, options: AnalyzeOptions | None = None, *,
              workers: int = 1, ray_address: str | None = None, overwrite: bool = False,
              manifest: str | Path | None = None, raw: bool = False, progress: bool = True,
              ray_num_cpus: float = 1.0, ray_num_gpus: float = 0.0, threads: int | None = None,
              report: str | None = None, process: ProcessFn | None = None) -> BatchSummary:
    """Analyse every video in ``inputs`` into one CSV each under ``out_dir`` (mirroring the input tree).

    ``workers=1`` runs in this process; ``workers>1`` runs a spawn process pool with one Pipeline per worker and
    ``threads`` (default: cores // workers) ONNX Runtime threads each; ``ray_address`` ("auto", "local",
    "ray://host:port" or "host:port") runs the same per-video function as Ray tasks of ``ray_num_cpus`` CPUs and
    ``ray_num_gpus`` GPUs each (a fraction such as 0.25 puts four tasks on one GPU).
    Videos whose manifest row is finished and whose output exists are skipped unless ``overwrite``. A failing
    video is recorded in the manifest and the run goes on; a pipeline that cannot be built (bad bundle or backend)
    raises its RtferError before more videos are tried. ``report`` (None = none): an HTML report per video beside
    its CSV and an index page linking them (``report`` names it; "" = ``out_dir/index.html``), rewritten at the end.
    ``process`` replaces the per-video function (default :func:`process_video`); it must be picklable (a module-level
    function) for the process pool and Ray. With the default, the bundle is checked (and, in process, the pipeline
    loaded) before the first video, so a bad bundle fails once rather than once per video.
    """
    if options is None:
        from rtfer.pipeline import AnalyzeOptions

        options = AnalyzeOptions()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    t0 = time.perf_counter()
    plan = plan_batch(inputs, out_dir, overwrite=overwrite, manifest=manifest, raw=raw, report=report)
    fn: ProcessFn = process or process_video
    summary = BatchSummary(videos_total=len(plan.todo) + len(plan.skipped), videos_skipped=len(plan.skipped),
                           manifest=str(plan.manifest))
    if plan.skipped:
        log.info("skipping %d videos finished by an earlier run (use overwrite to redo them)", len(plan.skipped))
    man = Manifest(plan.manifest).open()  # an unwritable out dir fails before any pipeline is loaded
    try:
        result = _execute(plan, options, fn, summary, man, t0, preload=process is None, workers=workers,
                          ray_address=ray_address,
                          progress=progress, ray_num_cpus=ray_num_cpus, ray_num_gpus=ray_num_gpus, threads=threads)
    finally:
        man.close()
    if report is not None:
        summary.index = str(write_batch_index(plan, index_path(out_dir, report)))
        log.info("report index: %s", summary.index)
    return result


def index_path(out_dir: str | Path, report: str | None) -> Path:
    """The batch report index page: ``report`` when it names a file, else OUT_DIR/index.html."""
    return Path(report) if report else Path(out_dir) / "index.html"


def write_batch_index(plan: BatchPlan, path: str | Path) -> Path:
    """The index page linking every video's report (finished now or earlier), with its manifest status."""
    from rtfer.report import write_index

    path = Path(path)
    rows_by_input = Manifest(plan.manifest).read()
    rows = []
    for task in sorted(plan.todo + plan.skipped, key=lambda t: t.input):
        m = rows_by_input.get(_key(task.input), {})
        href = None
        if task.report and Path(task.report).is_file():
            href = Path(os.path.relpath(task.report, _abs(path).parent)).as_posix()
        rows.append({"name": Path(task.input).name,
                     "href": href, "status": m.get("status", "not run"), "frames": m.get("frames", ""),
                     "faces": m.get("faces", ""), "error": m.get("error", ""),
                     "seconds": f"{float(m['seconds']):.1f} s" if m.get("seconds") else ""})
    return write_index(path, rows, title=f"rtfer reports — {len(rows)} videos")


def _execute(plan: BatchPlan, options: AnalyzeOptions, fn: ProcessFn, summary: BatchSummary, man: Manifest,
             t0: float, *, preload: bool, workers: int, ray_address: str | None, progress: bool, ray_num_cpus: float,
             ray_num_gpus: float, threads: int | None) -> BatchSummary:
    """Pick the executor, then write each result to the manifest and the summary as it comes back."""
    if ray_address is not None:
        from rtfer._ray import import_ray, run_ray

        import_ray()  # a missing extra fails before any work starts
        summary.executor, summary.workers = f"ray ({ray_address})", 0

        def on_slots(slots: int) -> None:
            summary.workers = slots

        results = run_ray(plan.todo, options, fn, ray_address, num_cpus=ray_num_cpus, num_gpus=ray_num_gpus,
                          on_slots=on_slots)
    elif workers > 1 and len(plan.todo) > 1:
        n = min(workers, len(plan.todo))
        per = threads or int(os.environ.get(ORT_THREADS_ENV, "0") or 0) or threads_per_worker(n)
        summary.executor, summary.workers = "process pool", n
        log.info("batch: %d videos on %d worker processes, %d onnxruntime threads each", len(plan.todo), n, per)
        if preload:  # the real per-video function: a bad bundle fails here, not once per worker
            from rtfer.bundle import BundleSpec, resolve_bundle_path

            BundleSpec.read(resolve_bundle_path(options.bundle))
        results = _run_pool(plan.todo, options, fn, n, per)
    else:
        if plan.todo and preload:
            get_pipeline(options)  # load before the progress bar starts; a bad bundle or backend fails here
        results = _run_in_process(plan.todo, options, fn)

    bar = None
    if progress and plan.todo:
        from tqdm import tqdm

        bar = tqdm(total=len(plan.todo), unit="video", file=sys.stderr, desc="videos", dynamic_ncols=True)
    try:
        for result in results:
            man.append(result)
            summary.add(result)
            if result.status == "failed":
                log.warning("%s failed: %s", result.input, result.error)
            for w in result.warnings:
                log.warning("%s: %s", result.input, w)
            if bar is not None:
                bar.update(1)
                if summary.videos_failed:
                    bar.set_postfix(failed=summary.videos_failed, refresh=False)
    finally:
        if bar is not None:
            bar.close()
        summary.wall_seconds = time.perf_counter() - t0
    return summary
