"""The batch driver: :func:`run_batch` plans the run, opens the manifest, picks an executor (in process, a local
process pool or Ray), records each result in the manifest and the summary as it comes back, and writes the report
index page."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from rtfer.batch import worker
from rtfer.batch.common import ORT_THREADS_ENV, ProcessFn
from rtfer.batch.discovery import abs_path
from rtfer.batch.executors import run_in_process, run_pool, threads_per_worker
from rtfer.batch.manifest import MANIFEST_NAME, Manifest, path_key
from rtfer.batch.plan import BatchPlan, index_path, plan_batch
from rtfer.batch.ray import import_ray, run_ray
from rtfer.batch.summary import BatchSummary
from rtfer.errors import BatchInterrupted, RtferError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtfer.pipeline import AnalyzeOptions

log = logging.getLogger(__name__)


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
    ``process`` replaces the per-video function (default :func:`rtfer.batch.worker.process_video`); it must be
    picklable (a module-level function) for the process pool and Ray. With the default, the bundle is checked (and, in process, the pipeline
    loaded) before the first video, so a bad bundle fails once rather than once per video.
    """
    if options is None:
        from rtfer.pipeline import AnalyzeOptions

        options = AnalyzeOptions()
    check_batch_numbers(workers, ray_num_cpus, ray_num_gpus)
    t0 = time.perf_counter()
    with lock_batch(out_dir, manifest):  # a second batch on this out dir or manifest is refused, naming this one
        return _run_locked(inputs, out_dir, options, t0, workers=workers, ray_address=ray_address,
                           overwrite=overwrite, manifest=manifest, raw=raw, progress=progress,
                           ray_num_cpus=ray_num_cpus, ray_num_gpus=ray_num_gpus, threads=threads, report=report,
                           process=process)


def check_batch_numbers(workers: int, ray_num_cpus: float, ray_num_gpus: float) -> None:
    """Worker processes, and Ray's CPUs and GPUs per video task: an RtferError naming the CLI flag, before any work."""
    import math

    if workers < 1:
        raise RtferError(f"--workers must be >= 1, got {workers}")
    if not (ray_num_cpus > 0 and math.isfinite(ray_num_cpus)):
        raise RtferError(f"--ray-cpus must be a number > 0 (CPUs per video task), got {ray_num_cpus}")
    if not (ray_num_gpus >= 0 and math.isfinite(ray_num_gpus)):
        raise RtferError(f"--ray-gpus must be a number >= 0 (GPUs per video task), got {ray_num_gpus}")


def lock_batch(out_dir: str | Path, manifest: str | Path | None = None):
    """Lock a batch's out dir and its manifest (:class:`rtfer.locking.PathLock`) for the whole run: a second batch
    run on either is refused with one line naming this one (pid and command), before it reads the manifest or
    touches a temporary file. The out dir is created here."""
    from contextlib import ExitStack

    from rtfer.errors import OutputError
    from rtfer.locking import PathLock

    out = Path(out_dir)
    manifest_path = Path(manifest) if manifest is not None else out / MANIFEST_NAME
    hint = "wait for it to finish, or use another --out-dir"
    stack = ExitStack()
    try:
        for folder, what in ((manifest_path.parent, f"the manifest {manifest_path}"), (out, f"to the out dir {out}")):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot write {what}: {exc.strerror or exc}") from None
        stack.enter_context(PathLock(out, "batch output folder", lock_file=out / ".rtfer-batch.lock", hint=hint))
        stack.enter_context(PathLock(manifest_path, "batch manifest", hint=hint))
    except BaseException:
        stack.close()
        raise
    return stack


def _run_locked(inputs, out_dir, options, t0, *, workers, ray_address, overwrite, manifest, raw, progress,
                ray_num_cpus, ray_num_gpus, threads, report, process) -> BatchSummary:
    plan = plan_batch(inputs, out_dir, overwrite=overwrite, manifest=manifest, raw=raw, report=report)
    fn: ProcessFn = process or worker.process_video
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


def write_batch_index(plan: BatchPlan, path: str | Path) -> Path:
    """The index page linking every video's report (finished now or earlier), with its manifest status."""
    from rtfer.report import read_index_summary, report_href, write_index

    path = Path(path)
    rows_by_input = Manifest(plan.manifest).read()
    rows = []
    for task in sorted(plan.todo + plan.skipped, key=lambda t: t.input):
        m = rows_by_input.get(path_key(task.input), {})
        href, facts = None, {}
        if task.report and Path(task.report).is_file():
            href = report_href(task.report, abs_path(path).parent)
            facts = read_index_summary(task.report)  # duration, faces, dominant emotion, mean valence
        rows.append({"name": Path(task.input).name,
                     "href": href, "status": m.get("status", "not run"), "frames": m.get("frames", ""),
                     "faces": m.get("faces", ""), "error": m.get("error", ""),
                     "seconds": f"{float(m['seconds']):.1f} s" if m.get("seconds") else "", "facts": facts})
    return write_index(path, rows, title=f"rtfer reports — {len(rows)} videos")


def _execute(plan: BatchPlan, options: AnalyzeOptions, fn: ProcessFn, summary: BatchSummary, man: Manifest,
             t0: float, *, preload: bool, workers: int, ray_address: str | None, progress: bool, ray_num_cpus: float,
             ray_num_gpus: float, threads: int | None) -> BatchSummary:
    """Pick the executor, then write each result to the manifest and the summary as it comes back."""
    if ray_address is not None:
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
        results = run_pool(plan.todo, options, fn, n, per)
    else:
        if plan.todo and preload:
            worker.get_pipeline(options)  # load before the progress bar starts; a bad bundle or backend fails here
        results = run_in_process(plan.todo, options, fn)

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
    except KeyboardInterrupt:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # a pool stops its workers now (their videos' temporary outputs removed)
        done = summary.videos_ok + summary.videos_partial + summary.videos_failed
        raise BatchInterrupted(done, summary.videos_failed, len(plan.todo), str(plan.manifest)) from None
    finally:
        if bar is not None:
            bar.close()
        summary.wall_seconds = time.perf_counter() - t0
    return summary
