"""Planning a batch run: discover the inputs, map each to its outputs (refusing two inputs that would write one
file), and split them into videos to do and videos a finished manifest row lets a resume skip."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from rtfer.batch.common import VideoTask
from rtfer.batch.discovery import abs_path, discover_inputs, output_path
from rtfer.batch.manifest import FINISHED_STATUSES, MANIFEST_NAME, Manifest, path_key
from rtfer.errors import InputError


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
    claimed: dict[Path, str] = {abs_path(manifest_path): "the manifest"}
    index = abs_path(index_path(out_dir, report)) if report is not None else None
    if index is not None:
        if index in claimed:
            raise InputError(f"the report index {index} would overwrite the manifest; choose another path")
        claimed[index] = "the report index page"
    for file, root in pairs:
        out = abs_path(output_path(file, root, out_dir))
        html = out.with_suffix(".html") if report is not None else None
        for path in (out, html):
            if path is None:
                continue
            other = claimed.get(path)
            if other is not None:
                raise InputError(f"{file} and {other} would both write {path}; give their common parent folder as "
                                 "the input or run them separately")
            claimed[path] = str(file)
        tasks.append(VideoTask(str(abs_path(file)), str(out), raw, str(html) if html is not None else ""))
    done = {} if overwrite else Manifest(manifest_path).read()
    todo, skipped = [], []
    for t in tasks:
        row = done.get(path_key(t.input))
        finished = row is not None and row["status"] in FINISHED_STATUSES and Path(t.output).is_file() \
            and path_key(row["output"]) == path_key(t.output) and (not t.report or Path(t.report).is_file())
        (skipped if finished else todo).append(t)
    if not overwrite:
        _refuse_foreign_outputs(todo, index)
    return BatchPlan(todo, skipped, manifest_path)


def _refuse_foreign_outputs(todo: list[VideoTask], index: Path | None = None) -> None:
    """The same rule as a single run: an existing file at an output path is replaced only when rtfer wrote it (a
    failed or interrupted video's earlier output), never a file of the user's without ``overwrite``."""
    from rtfer.errors import OutputError
    from rtfer.sinks.atomic import replaceable

    paths = [p for t in todo for p in (t.output, t.report) if p] + ([str(index)] if index is not None else [])
    foreign = [p for p in paths if not replaceable(p)]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputError(f"{foreign[0]}{more} exists and was not written by rtfer: pass --overwrite to replace it, "
                          "or choose another --out-dir")


def index_path(out_dir: str | Path, report: str | None) -> Path:
    """The batch report index page: ``report`` when it names a file, else OUT_DIR/index.html."""
    return Path(report) if report else Path(out_dir) / "index.html"
