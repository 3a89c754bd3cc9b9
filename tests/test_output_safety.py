"""Outputs under faults (issue 23): written under a temporary name and renamed into place, nothing torn under a final
name after a full disk, the error naming every output not written, Ctrl-C (twice) while finishing, two runs on one
output or one batch folder, batch workers dying with a killed driver, outputs checked before the run, and which
existing files a run may replace. Fast: a fake pipeline, tiny frames."""
from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from rtfer.errors import OutputError, RunInterrupted
from rtfer.run import OutputPlan, Run, plan_outputs
from rtfer.types import EmotionScores, Faces, Frame, FrameResult

REPO = Path(__file__).resolve().parents[1]


def _result(i: int, image: np.ndarray | None = None) -> FrameResult:
    probs = np.full((1, 7), 1 / 7, np.float32)
    probs[0, i % 7] += 0.3
    probs /= probs.sum()
    faces = Faces(np.array([[10, 10, 40, 40]], np.float32), np.zeros((1, 5, 2), np.float32),
                  np.array([0.9], np.float32), np.array([1]))
    return FrameResult(i, i / 10, "clip", faces, EmotionScores(probs), EmotionScores(probs), {"infer": 1.0},
                       image=image, width=64, height=48)


class _Source:
    kind, name, fps, duration_s, live, warnings = "video", "clip", 10.0, 1.0, False, []

    def __init__(self, n: int = 8) -> None:
        self.frame_count = n
        self._frames = iter([Frame(i, i / 10, np.full((48, 64, 3), 40 * (i % 5), np.uint8), "clip")
                             for i in range(n)])

    def __iter__(self):
        return self

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        pass


class _Pipeline:
    """One result per frame; ``on_frame(i)`` runs before frame i is yielded (to interrupt or look at the disk)."""

    options = None

    def __init__(self, on_frame=None) -> None:
        from types import SimpleNamespace

        self.on_frame = on_frame
        self.bundle = SimpleNamespace(spec=SimpleNamespace(name="fake", version="0", raw={}))

    def describe(self) -> dict:
        return {"bundle": "fake 0", "backend": "fake", "device": "cpu", "detector": "fake"}

    def run(self, source, cancel=None, keep_images=None):
        for frame in source:
            if self.on_frame is not None:
                self.on_frame(frame.index)
            yield _result(frame.index, frame.image)


def _plan(folder: Path, **kinds) -> OutputPlan:
    names = {"csv": "out.csv", "jsonl": "out.jsonl", "annotated": "out.mp4", "summary_png": "out.png",
             "report": "out.html"}
    return OutputPlan("clip.mp4", **{k: str(folder / names[k]) for k, on in kinds.items() if on})


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ temp and rename
def test_outputs_exist_under_their_final_names_only_when_finished(tmp_path):
    seen = {}

    def look(i):
        if i == 5:  # mid-run: the rows are on disk, under a hidden temporary name beside the final one
            seen["finals"] = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
            seen["temps"] = _leftovers(tmp_path)

    run = Run(_Pipeline(look), _Source(8), plan=_plan(tmp_path, csv=1, jsonl=1, summary_png=1))
    stats = run.execute()
    assert seen["finals"] == []
    assert any(n.startswith(".out.") and n.endswith(".part.csv") for n in seen["temps"])
    assert _leftovers(tmp_path) == []  # temporary files and lock files are gone
    assert [w for _, w in stats.written] == ["CSV", "JSON Lines", "summary plot"] and stats.not_written == []
    assert len(_rows(tmp_path / "out.csv")) == 8
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 8


def _full_disk_after(limit: int):
    """An ``open`` for rtfer.sinks.timeline whose files raise ENOSPC once ``limit`` bytes were written."""
    real_open = open

    class Full:
        def __init__(self, fh):
            self._fh, self._n = fh, 0

        def write(self, text):
            self._n += len(text)
            if self._n > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._fh.write(text)

        def __getattr__(self, name):
            return getattr(self._fh, name)

    def fake_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return Full(fh) if "w" in mode or "a" in mode else fh

    return fake_open


def test_a_full_disk_leaves_no_torn_file_and_the_error_names_every_output_not_written(tmp_path, monkeypatch):
    import matplotlib.figure

    from rtfer.sinks import timeline

    (tmp_path / "out.png").write_bytes(b"an older picture")  # a failed write keeps what the final name held
    monkeypatch.setattr(timeline, "open", _full_disk_after(3000), raising=False)

    def full_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_savefig)
    plan = _plan(tmp_path, csv=1, jsonl=1, summary_png=1)
    with pytest.raises(OutputError) as err:
        Run(_Pipeline(), _Source(40), plan=plan).execute()
    message = str(err.value)
    assert "No space left on device" in message and "\n" not in message
    not_written = message.split("not written: ", 1)[1]
    for what, name in (("CSV", "out.csv"), ("JSON Lines", "out.jsonl"), ("summary plot", "out.png")):
        assert f"{what} {tmp_path / name}" in not_written
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out.jsonl").exists()
    assert (tmp_path / "out.png").read_bytes() == b"an older picture"
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_really_full_tmpfs(tmp_path):
    """The issue's reproducer: a 160 KiB tmpfs, real ENOSPC from the kernel, every kind of output."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (disk / "filler").write_bytes(b"\0" * 120_000)
        plan = _plan(disk, csv=1, jsonl=1, annotated=1, summary_png=1)
        with pytest.raises(OutputError, match="No space left on device") as err:
            Run(_Pipeline(), _Source(300), plan=plan).execute()
        names = sorted(p.name for p in disk.iterdir())
        message = str(err.value)
        for name in ("out.csv", "out.jsonl", "out.mp4", "out.png"):  # each is complete, or not there and named
            assert (name in names) != (f" {disk / name}" in message.split("not written: ", 1)[1].split(";")[0])
        assert not [n for n in names if n.startswith(".")]
        if "out.csv" in names:  # written up to the error: whole rows, in order
            rows = _rows(disk / "out.csv")
            assert [int(r["frame"]) for r in rows] == list(range(len(rows))) and rows[-1]["valence"]
            assert (disk / "out.csv").read_bytes().endswith(b"\n")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_stale_temporary_files_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    from rtfer.sinks import CSVSink
    from rtfer.sinks.atomic import temp_path

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = temp_path(tmp_path / "out.csv", dead.pid), temp_path(tmp_path / "out.csv", os.getppid())
    stale.write_text("left by kill -9")
    live.write_text("another run's")
    with CSVSink(tmp_path / "out.csv") as sink:
        sink.append(_result(0))
    assert not stale.exists() and live.read_text() == "another run's"


# ---------------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_keeps_valid_partial_outputs_and_says_which(tmp_path):
    def interrupt(i):
        if i == 4:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as err:
        Run(_Pipeline(interrupt), _Source(10), plan=_plan(tmp_path, csv=1, jsonl=1, summary_png=1)).execute()
    assert [w for _, w in err.value.written] == ["CSV", "JSON Lines", "summary plot"]
    assert len(_rows(tmp_path / "out.csv")) == 4
    assert all(json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines())
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
    assert _leftovers(tmp_path) == []


class _SlowClose:
    """A sink whose close is interrupted by a Ctrl-C (sent to this process) while the outputs are finished."""

    def __init__(self) -> None:
        self.closed = False

    def open(self):
        return self

    def append(self, result) -> None:
        pass

    def close(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        self.closed = True


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
@pytest.mark.parametrize("first_interrupt", [True, False])
def test_ctrl_c_while_finishing_is_ignored_until_every_output_is_written(tmp_path, monkeypatch, first_interrupt):
    from rtfer.run import PlanOutputs

    slow = _SlowClose()
    plan = _plan(tmp_path, csv=1, summary_png=1, report=1)
    real_plan_open = PlanOutputs.open

    def with_slow(self, sink, path, what):  # the slow sink opens last, so it closes first: before every output
        out = real_plan_open(self, sink, path, what)
        if what == "HTML report":
            real_plan_open(self, slow, None, "slow")
        return out

    monkeypatch.setattr(PlanOutputs, "open", with_slow)
    # Python's own Ctrl-C handler, even where this process was started with SIGINT ignored (a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt(i):
        if first_interrupt and i == 3:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as err:
        Run(_Pipeline(interrupt), _Source(6), plan=plan).execute()
    assert slow.closed
    assert [w for _, w in err.value.written] == ["CSV", "summary plot", "HTML report"]
    for name in ("out.csv", "out.png", "out.html"):
        assert (tmp_path / name).stat().st_size > 0
    restored = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, previous)
    assert restored is signal.default_int_handler  # the handler the run found is back


def test_the_cli_after_ctrl_c_names_only_the_outputs_that_exist():
    from rtfer.cli import _interrupted_message

    exc = RunInterrupted([("a.csv", "CSV")], [("a.png", "summary plot", "No space left on device")])
    message = _interrupted_message(exc)
    assert "CSV a.csv" in message and "not written: summary plot a.png (No space left on device)" in message
    assert "finalised" not in _interrupted_message(KeyboardInterrupt())


# ------------------------------------------------------------------------------------------- two runs, one path
def _hold(code: str, tmp_path: Path) -> subprocess.Popen:
    """A process that runs ``code`` (taking a lock), prints "held" and waits to be killed."""
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(code) + "\nprint('held', flush=True)\nimport time\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(script), "--out-dir", "x"], stdout=subprocess.PIPE, text=True,
                            cwd=str(REPO))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "same.csv"
    holder = _hold(f"from rtfer.locking import PathLock\nPathLock({str(out)!r}, 'CSV').acquire()", tmp_path)
    try:
        with pytest.raises(OutputError, match=rf"in use by another rtfer run \(pid {holder.pid}: .*holder\.py"):
            Run(_Pipeline(), _Source(3), plan=OutputPlan("clip.mp4", str(out))).execute()
        video = tmp_path / "clip.mp4"
        video.write_bytes(b"not read: the lock is taken before the models load")
        code, _, err = run_cli(["analyze", str(video), "-o", str(out), "--bundle", str(tmp_path / "nope")], capsys)
        assert code == 2 and err.count("\n") == 1 and f"pid {holder.pid}" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed (kill -9): its lock file is left, but locks nothing
    assert (tmp_path / ".same.csv.rtfer-lock").exists()
    stats = Run(_Pipeline(), _Source(3), plan=OutputPlan("clip.mp4", str(out))).execute()
    assert stats.written == [(str(out), "CSV")] and _leftovers(tmp_path) == []


def test_a_second_batch_on_one_out_dir_is_refused_naming_the_first(tmp_path, capsys):
    from rtfer.batch import run_batch

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_text("frames=1")
    out = tmp_path / "out"
    holder = _hold(f"from rtfer.batch.driver import lock_batch\nlock_batch({str(out)!r})", tmp_path)
    try:
        with pytest.raises(OutputError, match=rf"in use by another rtfer run \(pid {holder.pid}: .*--out-dir x\)"):
            run_batch([str(videos)], out, progress=False)
        code, _, err = run_cli(["analyze", str(videos), "--out-dir", str(out), "-q"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"pid {holder.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [".manifest.csv.rtfer-lock", ".rtfer-batch.lock"]
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------- batch workers and kill -9
_DRIVER = '''
import os, sys, time
from pathlib import Path

from rtfer.batch import VideoResult, run_batch


def slow(task, options):
    Path(sys.argv[2], f"{os.getpid()}.pid").write_text(task.input)
    time.sleep(120)
    return VideoResult(task.input, task.output, "ok")


if __name__ == "__main__":
    run_batch([sys.argv[1]], sys.argv[3], workers=2, threads=1, progress=False, process=slow)
'''


def _batch_driver(tmp_path, source: str):
    """Three stand-in videos, a folder for the workers' marks, the out dir, and the driver script ``source``."""
    videos, marks, out = tmp_path / "videos", tmp_path / "marks", tmp_path / "out"
    videos.mkdir()
    marks.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (videos / name).write_text("x")
    script = tmp_path / "driver.py"
    script.write_text(source)
    return videos, marks, out, script


@pytest.mark.skipif(sys.platform == "win32", reason="kill -9")
def test_batch_workers_die_when_the_driver_is_killed(tmp_path):
    videos, pids, out, script = _batch_driver(tmp_path, _DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(videos), str(pids), str(out)], cwd=str(REPO))
    deadline = time.monotonic() + 90
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    workers = [int(p.stem) for p in pids.iterdir()]
    assert len(workers) == 2, "the workers did not start"
    driver.kill()  # SIGKILL: no cleanup in the driver
    driver.wait()
    deadline = time.monotonic() + 10
    from rtfer.sinks.atomic import pid_alive

    def alive(pid):  # a zombie (dead, not yet reaped by init) counts as gone
        try:
            return pid_alive(pid) and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
        except OSError:
            return False

    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in workers if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived their killed driver"


_INTERRUPTED_DRIVER = '''
import os, signal, sys, time
from pathlib import Path

from rtfer.batch import VideoResult, run_batch
from rtfer.errors import BatchInterrupted


def slow(task, options):
    marks = Path(sys.argv[2])
    name = Path(task.input).stem
    if name == "a":
        return VideoResult(task.input, task.output, "ok")
    temp = marks / f"{name}.temp"
    temp.write_text("a temporary output")
    (marks / f"{os.getpid()}.pid").write_text(name)
    try:
        time.sleep(120)
    finally:
        temp.unlink()  # the video's clean-up, as process_video removes its temporary outputs
    return VideoResult(task.input, task.output, "ok")


def interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupt)  # as the CLI does
    try:
        run_batch([sys.argv[1]], sys.argv[3], workers=2, threads=1, progress=False, process=slow)
    except BatchInterrupted as exc:
        print(exc.describe())
        sys.exit(130)
'''


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_batch_stops_its_videos_at_once_and_says_what_finished(tmp_path, how):
    """Ctrl-C in a terminal (SIGINT to the whole process group) or SIGTERM to the driver: the videos in flight stop
    now (their clean-up runs), not when they end; no worker prints a traceback; the finished video is in the
    manifest and the message says how many are left for a rerun."""
    videos, marks, out, script = _batch_driver(tmp_path, _INTERRUPTED_DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(videos), str(marks), str(out)], cwd=str(REPO),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 90
    while len(list(marks.glob("*.pid"))) < 2 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    workers = [int(p.stem) for p in marks.glob("*.pid")]
    assert len(workers) == 2, "the two slow videos did not start"
    t = time.monotonic()
    if how == "ctrl-c":
        os.killpg(driver.pid, signal.SIGINT)
    else:
        os.kill(driver.pid, signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=60)
    took = time.monotonic() - t
    assert driver.returncode == 130, stderr
    assert took < 15, f"the batch took {took:.0f} s to stop (its videos sleep 120 s)"
    assert "Traceback" not in stderr, stderr
    assert "1 of 3 videos finished" in stdout and "2 were stopped part-way or not started" in stdout, stdout
    assert list(marks.glob("*.temp")) == [], "a stopped video's clean-up did not run"
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [Path(r["input"]).name for r in rows] == ["a.mp4"] and rows[0]["status"] == "ok"
    for pid in workers:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
        assert state == "Z", f"worker {pid} outlived the interrupted batch"


def test_a_worker_exits_when_its_parent_is_already_gone():
    code = ("import os; from rtfer.batch.common import die_with_parent; die_with_parent(os.getppid() + 1); "
            "print('still here')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert proc.returncode == 1 and "still here" not in proc.stdout


# ------------------------------------------------------------------------------------- outputs checked before the run
def test_annotated_video_format_and_unwritable_folders_are_refused_before_the_run(tmp_path, capsys, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"never read")
    nope = ["--bundle", str(tmp_path / "no-bundle")]  # the pipeline is never loaded: the checks come first
    code, _, err = run_cli(["analyze", str(video), "-o", str(tmp_path / "a.csv"), "--annotated",
                            str(tmp_path / "x.png"), *nope], capsys)
    assert code == 2 and err.count("\n") == 1 and "annotated video" in err and ".mp4" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode))
    code, _, err = run_cli(["analyze", str(video), "-o", str(tmp_path / "a.csv"), "--annotated",
                            str(locked / "x.mp4"), *nope], capsys)
    assert code == 2 and err.count("\n") == 1 and "not writable" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "locked"]


# --------------------------------------------------------------------------------------- replacing existing files
def test_earlier_rtfer_outputs_are_recognised_and_other_files_are_not(tmp_path):
    from rtfer.sinks.atomic import written_by_rtfer

    plan = _plan(tmp_path, csv=1, jsonl=1, annotated=1, summary_png=1, report=1)
    Run(_Pipeline(), _Source(4), plan=plan).execute()
    for name in ("out.csv", "out.jsonl", "out.mp4", "out.png", "out.html"):
        assert written_by_rtfer(tmp_path / name), name
    for name, data in (("mine.csv", b"a,b\n1,2\n"), ("mine.jsonl", b'{"a": 1}\n'), ("mine.mp4", b"\0" * 64),
                       ("mine.png", b"\x89PNG\r\n\x1a\n"), ("mine.html", b"<html>rtfer</html>")):
        (tmp_path / name).write_bytes(data)
        assert not written_by_rtfer(tmp_path / name), name


def test_a_run_replaces_its_earlier_output_but_not_a_file_of_the_users(tmp_path):
    earlier = tmp_path / "out.csv"
    Run(_Pipeline(), _Source(2), plan=OutputPlan("clip.mp4", str(earlier))).execute()
    plan_outputs([str(tmp_path / "clip.mp4")], csv=str(earlier))  # an earlier rtfer CSV: replaced
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n1,2\n")
    with pytest.raises(OutputError, match="was not written by rtfer: pass --overwrite"):
        plan_outputs([str(tmp_path / "clip.mp4")], csv=str(notes))
    empty = tmp_path / "mktemp.csv"
    empty.touch()  # an empty file holds nothing to lose
    plan_outputs([str(tmp_path / "clip.mp4")], csv=str(empty))
    plans = plan_outputs([str(tmp_path / "clip.mp4")], csv=str(notes), overwrite=True)
    Run(_Pipeline(), _Source(2), plan=plans[0]).execute()
    assert _rows(notes)[0]["source"] == "clip"


def test_batch_follows_the_same_rule(tmp_path):
    from rtfer.batch import plan_batch

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.csv").write_text("my,own\n")
    with pytest.raises(OutputError, match="a.csv exists and was not written by rtfer: pass --overwrite"):
        plan_batch([str(videos)], out)
    assert len(plan_batch([str(videos)], out, overwrite=True).todo) == 1
    (out / "a.csv").write_text("source,frame,time_s,face_id,x1\n")  # an earlier (failed) rtfer output: redone
    assert len(plan_batch([str(videos)], out).todo) == 1


def test_the_pipeline_does_not_import_the_run_layer():
    """process_file lives in the run layer: rtfer.pipeline imports nothing from above it."""
    import ast

    tree = ast.parse((REPO / "rtfer" / "pipeline.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and (m == "rtfer.run" or m.startswith("rtfer.batch"))}
    import rtfer.run

    assert callable(rtfer.run.process_file)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_dev_null_is_written_directly_never_replaced():
    import stat

    plans = plan_outputs(["clip.mp4"], csv="/dev/null")  # not "a file rtfer did not write": nothing is replaced
    stats = Run(_Pipeline(), _Source(3), plan=plans[0]).execute()
    assert stats.written == [("/dev/null", "CSV")]
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [n for n in os.listdir("/dev") if "rtfer" in n or n.startswith(".null.")]


def test_an_output_that_cannot_be_opened_keeps_every_other_from_being_written(tmp_path, monkeypatch):
    import av

    (tmp_path / "out.csv").write_text("source,frame,time_s,face_id,x1\nearlier,0,0.0,1,1\n")  # an earlier run's

    def refuse(*args, **kwargs):
        raise av.error.PermissionError(13, "Permission denied")

    monkeypatch.setattr(av, "open", refuse)
    with pytest.raises(OutputError) as err:
        Run(_Pipeline(), _Source(3), plan=_plan(tmp_path, csv=1, annotated=1, summary_png=1)).execute()
    assert "cannot write video" in str(err.value) and f"not written: CSV {tmp_path / 'out.csv'}" in str(err.value)
    assert f"summary plot {tmp_path / 'out.png'}" in str(err.value)
    assert (tmp_path / "out.csv").read_text().startswith("source,frame,time_s,face_id,x1\nearlier")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_resumed_batch_removes_what_a_killed_worker_left_but_not_a_live_runs_files(tmp_path):
    from rtfer.sinks.atomic import remove_stale_temps  # what the batch worker calls before each video

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d, live = dead.pid, os.getppid()
    left = [f".clip.{d}.part.csv", f"..clip.{d}.part.{d}.part.csv", f"..clip.{d}.part.csv.rtfer-lock"]
    kept = [f".clip.{live}.part.csv", f"..clip.{live}.part.{live}.part.csv", "clip.csv", ".other.123.part.csv"]
    for name in left + kept:
        (tmp_path / name).write_text("x")
    remove_stale_temps(tmp_path / "clip.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_pool_broken_between_wait_and_submit_is_replaced_not_fatal(monkeypatch, tmp_path):
    """A worker that dies after the last wait makes the next submit raise BrokenProcessPool: the task is retried on
    a fresh pool instead of the driver crashing."""
    import concurrent.futures
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from rtfer.batch import VideoResult, VideoTask
    from rtfer.batch.executors import run_pool

    pools = []

    class FakePool:
        def __init__(self, *args, **kwargs):
            self.submits = 0
            pools.append(self)

        def submit(self, fn, *args):
            self.submits += 1
            if len(pools) == 1 and self.submits == 2:
                raise BrokenProcessPool("a child process terminated abruptly")
            fut = Future()
            fut.set_result(fn(*args))
            return fut

        def shutdown(self, wait=True, cancel_futures=False):
            pass

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", FakePool)
    tasks = [VideoTask(f"{i}.mp4", str(tmp_path / f"{i}.csv")) for i in range(3)]
    results = list(run_pool(tasks, None, lambda t, o: VideoResult(t.input, t.output, "ok"), 1, 1))
    assert sorted(r.input for r in results) == ["0.mp4", "1.mp4", "2.mp4"] and {r.status for r in results} == {"ok"}
    assert len(pools) == 2
