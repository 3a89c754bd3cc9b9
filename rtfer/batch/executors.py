"""The local executors for the per-video function: in this process, or a spawn process pool that survives a worker
dying; both yield one :class:`~rtfer.batch.common.VideoResult` per task and stop on a fatal error."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Iterator

from rtfer.batch.common import (FATAL_ERRORS, ProcessFn, VideoResult, VideoTask, failed_result, init_pool_worker,
                                run_task)
from rtfer.errors import one_line

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtfer.pipeline import AnalyzeOptions

log = logging.getLogger(__name__)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """ONNX Runtime intra-op threads for each of ``workers`` processes sharing ``cpus`` cores (at least 1)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


def run_in_process(todo: list[VideoTask], options: AnalyzeOptions, fn: ProcessFn) -> Iterator[VideoResult]:
    """Run ``fn`` on each task here, one after another; a failing video is a failed result."""
    for task in todo:
        try:
            yield fn(task, options)
        except FATAL_ERRORS:
            raise  # pipeline set-up failed or a module is missing: every video would fail the same way
        except Exception as exc:
            log.debug("%s failed", task.input, exc_info=True)
            yield failed_result(task, one_line(exc))


def run_pool(todo: list[VideoTask], options: AnalyzeOptions, fn: ProcessFn, workers: int,
             threads: int) -> Iterator[VideoResult]:
    """A spawn-context process pool with at most ``workers`` videos in flight.

    A worker that dies (a native crash, the OOM killer) breaks a ProcessPoolExecutor for every video in flight, and
    which of them killed it cannot be told. A fresh pool is started and those videos are retried, each alone (nothing
    else runs beside it): one that breaks the pool again while alone, or one that was alone when it broke the pool,
    is recorded as failed with that reason; the others (bystanders of the crash) run normally. The rest go on.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    queue = list(reversed(todo))
    suspects: list[VideoTask] = []  # in flight when the pool broke: retried one at a time

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_pool_worker,
                                   initargs=(threads, os.getpid()))  # workers die with this process, kill -9 too

    def died(task: VideoTask) -> VideoResult:
        return failed_result(task, "a worker process died while analysing this video (native crash or out of "
                                   "memory); rerun to retry")

    pool = new_pool()
    in_flight: dict = {}
    alone = False  # the one video in flight is a suspect running by itself
    try:
        while queue or suspects or in_flight:
            broken = False
            alone = alone and bool(in_flight)
            if suspects and not in_flight:
                task = suspects.pop(0)
                try:
                    in_flight[pool.submit(run_task, fn, task, options)] = task
                    alone = True
                except BrokenProcessPool:  # the pool broke before this retry started: retry it in the next one
                    suspects.insert(0, task)
                    broken = True
            while not broken and not alone and not suspects and queue and len(in_flight) < workers:
                task = queue.pop()
                try:
                    in_flight[pool.submit(run_task, fn, task, options)] = task
                except BrokenProcessPool:  # a worker died since the last wait: this task never started
                    queue.append(task)
                    broken = True
                    break
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED) if in_flight else (set(), set())
            crashed: list[VideoTask] = []
            for fut in done:
                task = in_flight.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken = True
                    crashed.append(task)
                except FATAL_ERRORS:
                    raise
                except Exception as exc:
                    yield failed_result(task, one_line(exc))
            if broken:
                crashed += list(in_flight.values())
                in_flight.clear()
                if alone or len(crashed) == 1:  # it ran by itself: it is the one that died
                    for task in crashed:
                        yield died(task)
                else:
                    suspects += crashed
                pool.shutdown(wait=False, cancel_futures=True)
                log.warning("a batch worker process died; starting a fresh pool (%d videos to retry one at a time, "
                            "%d more to go)", len(suspects), len(queue))
                pool = new_pool()
    except BaseException:  # Ctrl-C, SIGTERM, or the consumer closing this generator: stop now, not after the videos
        stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


#: How long stopped workers get to remove their temporary outputs before they are killed (seconds).
STOP_WAIT_S = 10.0


def stop_workers(pool) -> None:
    """End a pool's workers at once: SIGTERM, which a worker turns into the end of its video (temporary outputs
    removed) or of its idle process; the ones still there after :data:`STOP_WAIT_S` are killed."""
    import time

    procs = [p for p in list((getattr(pool, "_processes", None) or {}).values()) if p.is_alive()]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + STOP_WAIT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            log.warning("batch worker %s did not stop; killing it", p.pid)
            p.kill()
            p.join(1.0)
