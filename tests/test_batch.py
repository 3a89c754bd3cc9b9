"""Batch mode: discovery, output mirroring, manifest, resume, failure isolation (fast, with a fake per-video
analysis), then the real pipeline end to end on three short videos with a tiny random bundle."""
from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rtfer import batch
from rtfer.batch import (MANIFEST_COLUMNS, Manifest, VideoResult, VideoTask, discover_inputs, output_path,
                         plan_batch, run_batch, threads_per_worker)
from rtfer.errors import BundleError, InputError, OutputError
from rtfer.pipeline import AnalyzeOptions

# ---------------------------------------------------------------------------------------------------------------
# helpers: fake "videos" are text files whose content tells the fake analysis what to do


def _touch(path: Path, content: str = "frames=3") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    _touch(root / "a.mp4")
    _touch(root / "b.MOV", "frames=5")
    _touch(root / "day1" / "c.avi", "frames=2")
    _touch(root / "day1" / "deep" / "d.mkv", "frames=1")
    _touch(root / "notes.txt", "not a video")
    _touch(root / "day1" / "photo.jpg", "not a video")
    return root


def _read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        return list(reader)


class FakePipelines:
    """Stands in for rtfer.pipeline: counts pipeline builds and analyses fake videos."""

    def __init__(self) -> None:
        self.built = 0
        self.calls: list[str] = []

    def get_pipeline(self, options):
        if not self.built:
            self.built = 1
        return SimpleNamespace(options=options)

    def process_file(self, input_path, output_csv, options=None, *, pipeline=None, raw=False, progress=False,
                     **_):
        assert pipeline is not None, "batch must pass its cached pipeline"
        self.calls.append(Path(input_path).name)
        text = Path(input_path).read_text()
        out = Path(output_csv)
        assert out.name.startswith(".") and ".part" in out.name, "batch must write to a temp name first"
        with open(out, "w") as f:
            f.write("source,frame\n")
            if text == "bad":
                raise InputError(f"{input_path}: cannot decode\nthe container (moov atom missing)")
            if text == "interrupt":
                f.write("x,0\n")
                f.flush()
                raise KeyboardInterrupt
            n = int(text.split("=")[1])
            for i in range(n):
                f.write(f"{Path(input_path).name},{i}\n")
        return SimpleNamespace(frames=n, faces=2 * n, seconds=0.01, fps=n / 0.01, warnings=[], status="ok")


@pytest.fixture()
def fake(monkeypatch):
    f = FakePipelines()
    monkeypatch.setattr(batch.worker, "get_pipeline", f.get_pipeline)
    monkeypatch.setattr("rtfer.run.process_file", f.process_file)
    return f


# ---------------------------------------------------------------------------------------------------------------
# discovery and mirroring


def test_discover_directory_recursive_sorted_video_only(tmp_path):
    root = _tree(tmp_path)
    pairs = discover_inputs([str(root)])
    rel = [f.relative_to(root).as_posix() for f, _ in pairs]
    assert rel == ["a.mp4", "b.MOV", "day1/c.avi", "day1/deep/d.mkv"]
    assert all(r == root for _, r in pairs)


def test_discover_globs_files_and_duplicates(tmp_path):
    root = _tree(tmp_path)
    pairs = discover_inputs([str(root / "day1" / "**" / "*.mkv"), str(root / "a.mp4"), str(root),
                             str(root / "*.mp4")])
    files = [f.absolute() for f, _ in pairs]
    assert len(files) == len(set(files)) == 4  # a.mp4 and d.mkv reached twice, kept once
    assert files[0] == (root / "day1" / "deep" / "d.mkv").absolute()
    assert pairs[0][1] == root / "day1"  # a glob's root is its fixed prefix
    assert files[1] == (root / "a.mp4").absolute() and pairs[1][1] == root
    # a glob that matches only non-videos, or a missing path, is an input error
    with pytest.raises(InputError, match="no video"):
        discover_inputs([str(root / "*.txt")])
    with pytest.raises(InputError, match="no such file"):
        discover_inputs([str(tmp_path / "missing.mp4")])


def test_output_path_mirrors_tree(tmp_path):
    root = tmp_path / "in"
    out = tmp_path / "out"
    assert output_path(root / "x" / "y" / "clip.v2.mp4", root, out) == out / "x" / "y" / "clip.v2.csv"
    assert output_path(root / "clip.mp4", root, out, suffix=".jsonl") == out / "clip.jsonl"
    # a file outside its root falls back to its name
    assert output_path(tmp_path / "elsewhere.mp4", root, out) == out / "elsewhere.csv"


def test_plan_rejects_colliding_outputs(tmp_path):
    _touch(tmp_path / "cam1" / "s.mp4")
    _touch(tmp_path / "cam2" / "s.mp4")
    with pytest.raises(InputError, match="would both write"):
        plan_batch([str(tmp_path / "cam1"), str(tmp_path / "cam2")], tmp_path / "out")
    # their common parent mirrors them apart
    plan = plan_batch([str(tmp_path)], tmp_path / "out")
    assert sorted(Path(t.output).relative_to((tmp_path / "out").absolute()).as_posix() for t in plan.todo) == \
        ["cam1/s.csv", "cam2/s.csv"]


def test_threads_per_worker():
    assert threads_per_worker(1, 8) == 8
    assert threads_per_worker(3, 8) == 2
    assert threads_per_worker(16, 8) == 1


# ---------------------------------------------------------------------------------------------------------------
# run, manifest, resume, failures (fake analysis)


def test_run_mirrors_outputs_and_writes_manifest(tmp_path, fake):
    root = _tree(tmp_path)
    out = tmp_path / "out"
    s = run_batch([str(root)], out, AnalyzeOptions(), progress=False)
    assert (s.videos_total, s.videos_ok, s.videos_failed, s.videos_skipped) == (4, 4, 0, 0)
    assert (s.frames, s.faces) == (11, 22) and s.exit_code == 0 and s.failed == 0
    assert fake.built == 1
    for rel, n in (("a.csv", 3), ("b.csv", 5), ("day1/c.csv", 2), ("day1/deep/d.csv", 1)):
        assert len((out / rel).read_text().splitlines()) == n + 1
    rows = _read_manifest(out / "manifest.csv")
    assert [Path(r["output"]).relative_to(out.absolute()).as_posix() for r in rows] == \
        ["a.csv", "b.csv", "day1/c.csv", "day1/deep/d.csv"]
    assert {r["status"] for r in rows} == {"ok"} and rows[1]["frames"] == "5" and rows[1]["faces"] == "10"
    assert all(r["finished_at"] and not r["error"] for r in rows)
    assert not list(out.rglob(".*part*")), "no temp files may remain"
    table = s.table()
    assert "videos/hour" in table and "frames/s" in table and "manifest" in table


def test_resume_skips_finished_redoes_missing_and_overwrite(tmp_path, fake):
    root = _tree(tmp_path)
    out = tmp_path / "out"
    run_batch([str(root)], out, progress=False)
    fake.calls.clear()
    s = run_batch([str(root)], out, progress=False)
    assert fake.calls == [] and s.videos_skipped == 4 and s.videos_ok == 0 and s.exit_code == 0
    (out / "day1" / "c.csv").unlink()  # an output deleted since: redone
    s = run_batch([str(root)], out, progress=False)
    assert fake.calls == ["c.avi"] and (s.videos_ok, s.videos_skipped) == (1, 3)
    fake.calls.clear()
    s = run_batch([str(root)], out, overwrite=True, progress=False)
    assert sorted(fake.calls) == ["a.mp4", "b.MOV", "c.avi", "d.mkv"] and s.videos_skipped == 0
    assert len(_read_manifest(out / "manifest.csv")) == 4 + 1 + 4  # appended, never rewritten


def test_one_failure_never_stops_the_rest_and_is_retried(tmp_path, fake):
    root = _tree(tmp_path)
    _touch(root / "b.MOV", "bad")
    out = tmp_path / "out"
    s = run_batch([str(root)], out, progress=False)
    assert (s.videos_ok, s.videos_failed) == (3, 1) and s.exit_code == 1 and s.failed == 1
    assert "1 of 4 videos failed" in s.status_line()
    assert not (out / "b.csv").exists(), "a failed video leaves no output"
    assert not list(out.rglob(".*part*"))
    rows = _read_manifest(out / "manifest.csv")
    bad = [r for r in rows if r["status"] == "failed"]
    assert len(bad) == 1 and bad[0]["input"].endswith("b.MOV")
    assert "cannot decode the container" in bad[0]["error"] and "\n" not in bad[0]["error"]
    assert "failed:" in s.table()
    # fixed and rerun: only the failed one is redone
    _touch(root / "b.MOV", "frames=5")
    fake.calls.clear()
    s = run_batch([str(root)], out, progress=False)
    assert fake.calls == ["b.MOV"] and (s.videos_ok, s.videos_skipped, s.videos_failed) == (1, 3, 0)


def test_crash_mid_video_leaves_no_finished_output_and_resumes(tmp_path, fake):
    root = _tree(tmp_path)
    _touch(root / "day1" / "c.avi", "interrupt")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch([str(root)], out, progress=False)
    rows = _read_manifest(out / "manifest.csv")
    assert [Path(r["input"]).name for r in rows] == ["a.mp4", "b.MOV"]  # flushed before the crash
    assert not (out / "day1" / "c.csv").exists() and not list(out.rglob(".*part*"))
    # a stale temp file from a killed process and a torn manifest line must not confuse the resume
    _touch(out / "day1" / ".c.99999.part.csv", "source,frame\nhalf")
    with open(out / "manifest.csv", "a") as f:
        f.write(f"{root / 'day1' / 'c.avi'},{out / 'day1' / 'c.csv'},7,")
    _touch(root / "day1" / "c.avi", "frames=2")
    fake.calls.clear()
    s = run_batch([str(root)], out, progress=False)
    assert fake.calls == ["c.avi", "d.mkv"] and s.videos_skipped == 2
    assert not list(out.rglob(".*part*"))
    rows = _read_manifest(out / "manifest.csv")
    assert [Path(r["input"]).name for r in rows if r["finished_at"]] == ["a.mp4", "b.MOV", "c.avi", "d.mkv"]


def test_interrupted_run_status_partial_is_not_finished(tmp_path, fake, monkeypatch):
    root = _tree(tmp_path)
    real = fake.process_file

    def cancelled(input_path, output_csv, *a, **k):
        st = real(input_path, output_csv, *a, **k)
        if Path(input_path).name == "a.mp4":
            st.status = "partial"
        return st

    monkeypatch.setattr("rtfer.run.process_file", cancelled)
    out = tmp_path / "out"
    s = run_batch([str(root)], out, progress=False)
    assert (s.videos_ok, s.videos_partial) == (3, 1) and not (out / "a.csv").exists()
    monkeypatch.setattr("rtfer.run.process_file", real)
    fake.calls.clear()
    run_batch([str(root)], out, progress=False)
    assert fake.calls == ["a.mp4"]


def test_pipeline_setup_error_stops_the_batch(tmp_path, monkeypatch):
    root = _tree(tmp_path)

    def broken(options):
        raise BundleError("no bundle named or at 'nope'")

    monkeypatch.setattr(batch.worker, "get_pipeline", broken)
    with pytest.raises(BundleError, match="nope"):
        run_batch([str(root)], tmp_path / "out", AnalyzeOptions(bundle="nope"), progress=False)
    manifest = tmp_path / "out" / "manifest.csv"
    assert not manifest.exists() or _read_manifest(manifest) == []
    with pytest.raises(BundleError, match="nope"):  # the pool checks the bundle before starting workers
        run_batch([str(root)], tmp_path / "out", AnalyzeOptions(bundle="nope"), workers=2, progress=False)


def test_foreign_manifest_is_refused(tmp_path, fake):
    root = _tree(tmp_path)
    _touch(tmp_path / "m.csv", "a,b\n1,2\n")
    with pytest.raises(OutputError, match="not an rtfer batch manifest"):
        run_batch([str(root)], tmp_path / "out", manifest=tmp_path / "m.csv", progress=False)


def test_manifest_roundtrip_last_row_wins(tmp_path):
    m = Manifest(tmp_path / "m.csv")
    with m:
        m.append(VideoResult("/v/a.mp4", "/o/a.csv", "failed", error="boom", finished_at="t1"))
        m.append(VideoResult("/v/a.mp4", "/o/a.csv", "ok", frames=3, finished_at="t2"))
    rows = m.read()
    assert list(rows) == ["/v/a.mp4"] and rows["/v/a.mp4"]["status"] == "ok"


def test_missing_ray_names_the_extra(tmp_path, fake, monkeypatch):
    root = _tree(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"rtfer\[ray\]"):
        run_batch([str(root)], tmp_path / "out", ray_address="local", progress=False)


# ---------------------------------------------------------------------------------------------------------------
# the process pool (spawn): module-level fake so the workers can import it


def pool_fake(task: VideoTask, options) -> VideoResult:
    """Per-video function run in spawned workers: reports its pid and thread cap; 'die' kills the worker."""
    text = Path(task.input).read_text()
    if text == "die":
        time.sleep(0.5)  # let the siblings' results arrive first: only this video's failure is then certain
        os._exit(3)
    if text == "bad":
        raise ValueError("unexpected failure\nin a worker")
    time.sleep(1.5 if text == "slow" else 0.2)  # long enough that a dying sibling is noticed while this one is in flight
    Path(task.output).parent.mkdir(parents=True, exist_ok=True)
    Path(task.output).write_text(f"{os.getpid()},{os.environ.get('RTFER_ORT_THREADS')}\n")
    return VideoResult(task.input, task.output, "ok", frames=1, faces=1, finished_at="now")


def test_pool_isolates_failures_and_worker_deaths(tmp_path, monkeypatch):
    root = tmp_path / "v"
    for name, content in (("1.mp4", "ok"), ("2.mp4", "bad"), ("3.mp4", "die"), ("4.mp4", "ok"), ("5.mp4", "ok"),
                          ("6.mp4", "ok")):
        _touch(root / name, content)
    monkeypatch.delenv("RTFER_ORT_THREADS", raising=False)
    out = tmp_path / "out"
    s = run_batch([str(root)], out, workers=2, threads=1, progress=False, process=pool_fake)
    assert s.executor == "process pool" and s.workers == 2
    rows = {Path(r["input"]).name: r for r in _read_manifest(out / "manifest.csv")}
    assert set(rows) == {f"{i}.mp4" for i in range(1, 7)}
    assert rows["2.mp4"]["status"] == "failed" and rows["2.mp4"]["error"].startswith("ValueError: unexpected")
    assert rows["3.mp4"]["status"] == "failed" and "worker process died" in rows["3.mp4"]["error"]
    assert rows["6.mp4"]["status"] == "ok", "the batch goes on after a worker dies"
    assert s.videos_failed >= 2 and s.videos_ok + s.videos_failed == 6
    pids = {(out / f"{n[0]}.csv").read_text().split(",")[0] for n in rows if rows[n]["status"] == "ok"}
    assert str(os.getpid()) not in pids
    assert all((out / f"{n[0]}.csv").read_text().strip().endswith(",1") for n in rows if rows[n]["status"] == "ok")


def test_a_video_in_flight_beside_a_dying_worker_is_retried_not_failed(tmp_path, monkeypatch):
    """The dying worker breaks the pool for the slow video too; which of the two died cannot be told, so both are
    retried alone: the slow one then succeeds and only the one that dies again is failed."""
    root = tmp_path / "v"
    for name, content in (("1.mp4", "slow"), ("2.mp4", "die"), ("3.mp4", "ok")):
        _touch(root / name, content)
    monkeypatch.delenv("RTFER_ORT_THREADS", raising=False)
    out = tmp_path / "out"
    s = run_batch([str(root)], out, workers=2, threads=1, progress=False, process=pool_fake)
    rows = {Path(r["input"]).name: r for r in _read_manifest(out / "manifest.csv")}
    assert rows["1.mp4"]["status"] == "ok", rows["1.mp4"]
    assert rows["2.mp4"]["status"] == "failed" and "worker process died" in rows["2.mp4"]["error"]
    assert rows["3.mp4"]["status"] == "ok"
    assert (s.videos_ok, s.videos_failed) == (2, 1)


def test_batch_modules_import_one_way():
    """The executors share the task types with the driver through rtfer.batch.common and never import the driver;
    the package's modules form no cycle and import no private names from each other."""
    import subprocess

    from package_helpers import assert_layered

    graph = assert_layered("rtfer.batch")
    assert graph["rtfer.batch.ray"] == {"rtfer.batch.common"}
    assert graph["rtfer.batch.executors"] == {"rtfer.batch.common"}
    assert graph["rtfer.batch.common"] == set()
    code = ("import rtfer.batch, rtfer.batch.common as c; "
            "assert rtfer.batch.VideoTask is c.VideoTask and rtfer.batch.VideoResult is c.VideoResult")
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)


def test_one_line_names_foreign_errors_and_hides_credentials():
    from rtfer.errors import one_line

    assert one_line(ValueError("bad\n  value")) == "ValueError: bad value"
    assert one_line(InputError("cannot read rtsp://alice:pw@cam/1")) == "cannot read rtsp://***@cam/1"
    assert one_line(KeyError()) == "KeyError" and len(one_line(ValueError("x" * 900))) == 500


def test_symlinked_copies_are_one_input(tmp_path):
    """Inputs are de-duplicated by real path (issue 23): two links to one file analyse it once."""
    real = _touch(tmp_path / "src" / "clip.mp4")
    links = tmp_path / "links"
    links.mkdir()
    for i in range(2):
        (links / f"copy{i}.mp4").symlink_to(real)
    pairs = discover_inputs([str(links), str(links / "copy0.mp4"), str(real)])
    assert [f.name for f, _ in pairs] == ["copy0.mp4"]


def test_missing_module_stops_the_batch(tmp_path, fake, monkeypatch):
    root = _tree(tmp_path)

    def no_module(*a, **k):
        raise ModuleNotFoundError("No module named 'rtfer.sinks'")

    monkeypatch.setattr("rtfer.run.process_file", no_module)
    with pytest.raises(ImportError):
        run_batch([str(root)], tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------------------------------
# the real pipeline end to end: three short videos of real faces, a tiny random bundle (conftest's tiny_bundle)


@pytest.fixture(scope="session")
def short_videos(tmp_path_factory, group_photo) -> Path:
    """Three 6-frame videos panning across the six-face group photo, one in a subfolder."""
    import cv2

    from media_helpers import write_test_video

    root = tmp_path_factory.mktemp("videos")
    h, w = group_photo.shape[:2]
    for k, rel in enumerate(("a.mp4", "b.mp4", "sub/c.mp4")):
        frames = []
        for i in range(6):
            x = min(w - 640, k * 200 + i * 8)
            frames.append(cv2.resize(group_photo[:, x:x + 640], (320, 222), interpolation=cv2.INTER_AREA))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_test_video(root / rel, frames, fps=10)
    return root


def _check_real_outputs(out: Path, summary) -> dict[str, list[dict]]:
    assert (summary.videos_total, summary.videos_ok, summary.videos_failed) == (3, 3, 0)
    assert summary.frames == 18 and summary.faces > 0
    rows = _read_manifest(out / "manifest.csv")
    assert sorted(Path(r["output"]).relative_to(out.absolute()).as_posix() for r in rows) == \
        ["a.csv", "b.csv", "sub/c.csv"]
    assert all(r["status"] == "ok" and r["frames"] == "6" and float(r["seconds"]) > 0 for r in rows)
    tables = {}
    for rel in ("a.csv", "b.csv", "sub/c.csv"):
        with open(out / rel, newline="") as f:
            tables[rel] = list(csv.DictReader(f))
        assert {int(r["frame"]) for r in tables[rel]} == set(range(6))
        assert sum(1 for r in tables[rel] if r["face_id"] != "") > 0, f"{rel}: no face found in the group photo"
    assert sum(int(r["faces"]) for r in rows) == summary.faces
    return tables


@pytest.mark.slow
def test_real_videos_in_process_then_two_workers(tmp_path, tiny_bundle, short_videos):
    options = AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu")
    one = run_batch([str(short_videos)], tmp_path / "one", options, progress=False)
    t1 = _check_real_outputs(tmp_path / "one", one)
    two = run_batch([str(short_videos)], tmp_path / "two", options, workers=2, progress=False)
    assert two.executor == "process pool" and two.workers == 2
    t2 = _check_real_outputs(tmp_path / "two", two)
    for rel in t1:  # the same analysis whichever executor ran it
        assert [(r["frame"], r["face_id"], r["x1"]) for r in t1[rel]] == [(r["frame"], r["face_id"], r["x1"])
                                                                          for r in t2[rel]]
        for a, b in zip(t1[rel], t2[rel]):
            if a["face_id"]:
                assert abs(float(a["happiness"]) - float(b["happiness"])) < 1e-3
    again = run_batch([str(short_videos)], tmp_path / "two", options, workers=2, progress=False)
    assert again.videos_skipped == 3 and again.videos_ok == 0


def test_real_unreadable_video_is_one_failed_row(tmp_path, tiny_bundle, short_videos):
    import shutil

    root = tmp_path / "in"
    shutil.copytree(short_videos, root)
    (root / "broken.mp4").write_bytes(b"\x00not a video at all" * 10)
    out = tmp_path / "out"
    s = run_batch([str(root)], out, AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu"),
                  progress=False)
    assert (s.videos_ok, s.videos_failed) == (3, 1)
    bad = [r for r in _read_manifest(out / "manifest.csv") if r["status"] == "failed"]
    assert len(bad) == 1 and bad[0]["input"].endswith("broken.mp4") and bad[0]["error"]
    assert not (out / "broken.csv").exists() and not list(out.rglob(".*part*"))


def test_ray_task_slots():
    from rtfer.batch.ray import task_slots
    from rtfer.errors import BackendError

    assert task_slots({"CPU": 8.0}, 1) == 8
    assert task_slots({"CPU": 8.0, "GPU": 1.0}, 1, 0.25) == 4
    with pytest.raises(BackendError, match="cannot fit one task"):
        task_slots({"CPU": 8.0}, 1, 0.5)  # asks for GPUs on a CPU-only cluster: would wait forever


def test_unwritable_out_dir_fails_before_loading_anything(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    (tmp_path / "file").write_text("a file where the out dir should be")

    def must_not_load(options):
        raise AssertionError("the pipeline must not be loaded when the manifest cannot be written")

    monkeypatch.setattr(batch.worker, "get_pipeline", must_not_load)
    with pytest.raises(OutputError, match="cannot write the manifest"):
        run_batch([str(root)], tmp_path / "file" / "out", progress=False)


def test_ray_auto_without_a_cluster_says_how_to_start_one():
    from types import SimpleNamespace

    from rtfer.batch.ray import connect
    from rtfer.errors import BackendError

    def init(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to")

    fake = SimpleNamespace(is_initialized=lambda: False, init=init)
    with pytest.raises(BackendError, match=r"ray start --head.*--ray local"):
        connect(fake, "auto")
    with pytest.raises(BackendError, match="cannot connect to the Ray cluster at 'head:6379'"):
        connect(fake, "head:6379")


@pytest.mark.parametrize("flag, value, message", [
    ("--workers", "0", "--workers must be >= 1, got 0"),
    ("--workers", "-2", "--workers must be >= 1, got -2"),
    ("--ray-cpus", "0", "--ray-cpus must be a number > 0"),
    ("--ray-cpus", "nan", "--ray-cpus must be a number > 0"),
    ("--ray-gpus", "-1", "--ray-gpus must be a number >= 0"),
    ("--ray-gpus", "inf", "--ray-gpus must be a number >= 0"),
])
def test_batch_numbers_are_checked_before_anything_starts(tmp_path, capsys, flag, value, message):
    from cli_helpers import run_cli

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"not opened: the flags fail first")
    code, _, err = run_cli(["analyze", str(videos), "--out-dir", str(tmp_path / "out"), flag, value], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("rtfer: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_an_interrupt_in_process_names_what_finished_not_a_temporary_file(tmp_path):
    """Ctrl-C during the second of three videos (workers=1): the first is in the manifest; the message counts the
    others for a rerun instead of naming the stopped video's temporary CSV, which its clean-up removed."""
    from rtfer.errors import BatchInterrupted, RunInterrupted

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (videos / name).write_text("x")

    def process(task, options):
        if Path(task.input).stem == "b":
            raise RunInterrupted(written=[(str(tmp_path / "out" / ".b.123.part.csv"), "CSV")])
        Path(task.output).write_text("source,frame,time_s,face_id\n")
        return VideoResult(task.input, task.output, "ok", finished_at=batch.now())

    with pytest.raises(BatchInterrupted) as info:
        batch.run_batch([str(videos)], tmp_path / "out", progress=False, process=process)
    exc = info.value
    assert (exc.finished, exc.failed, exc.total) == (1, 0, 3)
    text = exc.describe()
    assert "1 of 3 videos finished" in text and "2 were stopped part-way or not started" in text
    assert ".part" not in text and str(tmp_path / "out" / "manifest.csv") in text
    rows = Manifest(tmp_path / "out" / "manifest.csv").read()
    assert [Path(k).name for k in rows] == ["a.mp4"]
