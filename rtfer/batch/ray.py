"""The Ray executor for :func:`rtfer.batch.run_batch`: the same per-video function as Ray tasks.

Ray schedules; we do not. Each task analyses one video on a Ray worker; Ray reuses worker processes for tasks of
the same function, so the module-level pipeline cache in :mod:`rtfer.batch.worker` gives one Pipeline per Ray
worker. The driver keeps at most a bounded number of tasks in flight, collects results with ``ray.wait`` and writes
the manifest as they come back. Outputs are written by the workers, so ``out_dir`` must be a path every node sees
(NFS, a shared volume); the driver checks finished outputs there for resume.

Dependencies go one way: :mod:`rtfer.batch.driver` imports this module, and this module imports only
:mod:`rtfer.batch.common` from the package.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rtfer.batch.common import FATAL_ERRORS, ProcessFn, VideoResult, VideoTask, failed_result, init_worker
from rtfer.errors import BackendError, missing_extra, one_line

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtfer.pipeline import AnalyzeOptions

log = logging.getLogger(__name__)


def import_ray() -> Any:
    """Import ray, or raise an ImportError that names the extra providing it."""
    try:
        import ray
    except ImportError:
        raise missing_extra("ray", "ray") from None
    return ray


def _ray_call(fn: ProcessFn, task: VideoTask, options: AnalyzeOptions, threads: int) -> VideoResult:
    """Body of one Ray task: cap compute threads to the task's CPUs, then run the per-video function."""
    init_worker(threads)
    return fn(task, options)


def connect(ray: Any, address: str, num_cpus: float | None = None) -> bool:
    """Connect to (or, for "local", start) a Ray instance unless one is already connected; True if we started it.

    "auto" joins the cluster this machine belongs to (RAY_ADDRESS or a running ``ray start``); "ray://host:port" is a
    Ray Client connection; "host:port" joins a cluster's GCS directly; "local" starts a private instance here.
    """
    if ray.is_initialized():
        log.info("ray: using the instance this process is already connected to")
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == "local":
        ray.init(num_cpus=int(num_cpus) if num_cpus else None, **kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            if address == "auto":
                raise BackendError("--ray auto found no running Ray cluster on this machine: start one with "
                                   "`ray start --head` (or set RAY_ADDRESS), or use --ray local for a private "
                                   "instance on this machine") from None
            raise BackendError(f"cannot connect to the Ray cluster at {address!r}: {one_line(exc)}") from None
    res = ray.cluster_resources()
    log.info("ray: connected to %s (%s CPUs, %s GPUs)", address, res.get("CPU", 0), res.get("GPU", 0))
    return True


def task_slots(resources: dict, num_cpus: float, num_gpus: float = 0.0) -> int:
    """How many of our tasks the cluster runs at once; fails when it can run none (they would wait forever)."""
    if num_cpus <= 0:
        raise ValueError(f"ray_num_cpus must be > 0, got {num_cpus}")
    slots = int(float(resources.get("CPU", 0.0)) // num_cpus)
    if num_gpus > 0:
        slots = min(slots, int(float(resources.get("GPU", 0.0)) // num_gpus))
    if slots < 1:
        raise BackendError(f"the Ray cluster ({resources.get('CPU', 0)} CPUs, {resources.get('GPU', 0)} GPUs) cannot "
                           f"fit one task of {num_cpus} CPUs and {num_gpus} GPUs")
    return slots


def run_ray(todo: list[VideoTask], options: AnalyzeOptions, fn: ProcessFn, address: str, *,
            num_cpus: float = 1.0, num_gpus: float = 0.0, max_in_flight: int | None = None,
            on_slots: Callable[[int], None] | None = None) -> Iterator[VideoResult]:
    """Yield one result per task as Ray finishes them (completion order).

    A task that raises (its worker died, a bug) is a failed video; an RtferError from building the pipeline stops
    the batch, as in the other executors. A Ray instance started here ("local") is shut down at the end.
    ``on_slots`` is told how many tasks the cluster runs at once, before the first is submitted.
    """
    ray = import_ray()
    if not todo:
        return iter(())
    # Connect now, not on the first next(): Ray's start-up messages (e.g. "Token authentication is enabled") and a
    # failed connection then come before the caller's progress bar, not inside it.
    started = connect(ray, address)
    try:
        slots = task_slots(ray.cluster_resources(), num_cpus, num_gpus)
    except BaseException:
        if started:
            ray.shutdown()
        raise
    if on_slots is not None:
        on_slots(slots)
    return _ray_results(ray, started, slots, todo, options, fn, num_cpus=num_cpus, num_gpus=num_gpus,
                        max_in_flight=max_in_flight)


def _ray_results(ray: Any, started: bool, slots: int, todo: list[VideoTask], options: AnalyzeOptions,
                 fn: ProcessFn, *, num_cpus: float, num_gpus: float,
                 max_in_flight: int | None) -> Iterator[VideoResult]:
    pending: dict = {}
    try:
        limit = max_in_flight or 2 * slots  # enough queued that no slot idles while the driver writes the manifest
        threads = max(1, int(num_cpus))
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_ray_call)
        options_ref = ray.put(options)
        queue = list(reversed(todo))
        while queue or pending:
            while queue and len(pending) < limit:
                task = queue.pop()
                pending[remote.remote(fn, task, options_ref, threads)] = task
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:
                    cause = getattr(exc, "cause", None) or exc
                    if isinstance(cause, FATAL_ERRORS):
                        raise cause from None
                    yield failed_result(task, one_line(cause))
    finally:
        for ref in pending:  # stopped early (fatal error, Ctrl-C): don't leave our tasks running on the cluster
            try:
                ray.cancel(ref)
            except Exception:  # already finished or the connection is gone
                pass
        if started:
            ray.shutdown()
