"""`rtfer analyze` on good and bad inputs: one-line errors, exit codes, partial results kept."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtfer.cli import main
from rtfer.errors import InputError
from rtfer.sinks import CSV_COLUMNS
from rtfer.types import Frame

from cli_helpers import bundle_args as _common
from cli_helpers import run_cli
from media_helpers import pan_frames


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_one_line_error(code, err, needle):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("rtfer: error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert needle.lower() in lines[0].lower(), lines[0]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.mp4", "missing.mp4"),
    (lambda d: _write(d / "empty.mp4", b""), "empty.mp4"),
    (lambda d: _write(d / "noise.mp4", np.random.default_rng(0).bytes(50_000)), "noise.mp4"),
    (lambda d: _write(d / "notes.txt", b"hello\n" * 100), "notes.txt"),
])
def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys, tiny_bundle, make, needle):
    path = make(tmp_path)
    code, out, err = run_cli(["analyze", str(path), "-o", str(tmp_path / "o.csv"), *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("out", ["/proc/rtfer-test/out.csv", "{tmp}/no/such/dir/out.csv", "/proc/version.csv"])
def test_unwritable_output(tmp_path, capsys, tiny_bundle, group_video, out):
    out = out.format(tmp=tmp_path)
    code, _, err = run_cli(["analyze", str(group_video), "-o", out, *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, "cannot write")


def test_bundle_path_that_is_not_a_bundle(tmp_path, capsys, group_video):
    code, _, err = run_cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--bundle", str(tmp_path)],
                           capsys)
    assert_one_line_error(code, err, "not a model bundle")
    code, _, err = run_cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--bundle", "nonexistent"],
                           capsys)
    assert_one_line_error(code, err, "no bundle")


def test_tampered_bundle_is_refused(tmp_path, capsys, tiny_bundle, group_video):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    onnx_file = next(bad.glob("*.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-100])
    code, _, err = run_cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--bundle", str(bad)], capsys)
    assert_one_line_error(code, err, "sha256")


def test_video_to_csv_with_summary_and_annotated(tmp_path, capsys, tiny_bundle, group_video):
    out = tmp_path / "o.csv"
    code, stdout, err = run_cli(["analyze", str(group_video), "-o", str(out), "--raw", "--summary",
                                 str(tmp_path / "s.png"), "--annotated", str(tmp_path / "a.mp4"), "--jsonl",
                                 str(tmp_path / "o.jsonl"), *_common(tiny_bundle)], capsys)
    assert code == 0, err
    rows = _rows(out)
    header = list(rows[0].keys())
    assert header[:len(CSV_COLUMNS)] == list(CSV_COLUMNS)
    assert "raw_happiness" in header and "raw_emotion" in header
    assert {int(r["frame"]) for r in rows} == set(range(24))
    assert all(r["source"] == "group.mp4" for r in rows)
    assert (tmp_path / "s.png").stat().st_size > 10_000
    assert (tmp_path / "a.mp4").stat().st_size > 10_000
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == len(rows)
    assert "frames/s" in stdout and "dominant" in stdout


def test_truncated_video_keeps_decodable_frames(tmp_path, capsys, caplog, tiny_bundle, group_photo):
    from media_helpers import write_test_video

    full = tmp_path / "full.mp4"
    write_test_video(full, pan_frames(group_photo, 40, out_width=320), fps=10)
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "o.csv"
    code, _, err = run_cli(["analyze", str(cut), "-o", str(out), *_common(tiny_bundle)], capsys)
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "truncated" in r.getMessage()]
    assert len(warned) == 1 and "Traceback" not in err  # logged once (the CLI no longer prints it again at the end)
    frames = {int(r["frame"]) for r in _rows(out)}
    assert 5 < len(frames) < 40


def test_no_faces_gives_one_empty_row_per_frame(tmp_path, capsys, tiny_bundle):
    from media_helpers import write_test_video

    video = tmp_path / "blank.mp4"
    write_test_video(video, [np.full((120, 160, 3), 90 + i, np.uint8) for i in range(8)], fps=8)
    out = tmp_path / "o.csv"
    code, _, err = run_cli(["analyze", str(video), "-o", str(out), *_common(tiny_bundle)], capsys)
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 8 and all(r["face_id"] == "" and r["happiness"] == "" for r in rows)


def test_fifty_faces(tmp_path, capsys, tiny_bundle, group_photo):
    from rtfer.detection import create_detector

    faces = create_detector("centerface").detect(group_photo)
    tiles = []
    for box in faces.xyxy[:5]:
        x1, y1, x2, y2 = box.astype(int)
        cx, cy, s = (x1 + x2) // 2, (y1 + y2) // 2, int(max(x2 - x1, y2 - y1) * 0.9)
        crop = group_photo[max(cy - s, 0):cy + s, max(cx - s, 0):cx + s]
        tiles.append(cv2.resize(crop, (96, 96)))
    grid = np.vstack([np.hstack([tiles[(r + c) % 5] for c in range(10)]) for r in range(5)])
    path = tmp_path / "crowd.png"
    cv2.imwrite(str(path), grid)
    out = tmp_path / "o.csv"
    code, _, err = run_cli(["analyze", str(path), "-o", str(out), "--det-width", "960", *_common(tiny_bundle)],
                           capsys)
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 50, f"{len(rows)} of the 50 tiled faces found"
    assert len({r["face_id"] for r in rows}) == 50
    # each row is a different tile: its box centre falls inside one 96x96 tile of the 5x10 grid
    tiles_hit = set()
    for r in rows:
        cx, cy = (float(r["x1"]) + float(r["x2"])) / 2, (float(r["y1"]) + float(r["y2"])) / 2
        assert 0 <= cx < 960 and 0 <= cy < 480
        tiles_hit.add((int(cy // 96), int(cx // 96)))
    assert len(tiles_hit) == 50, "two rows are the same face, or a tile was missed"
    code, _, err = run_cli(["analyze", str(path), "-o", str(out), "--max-faces", "10", "--det-width", "960",
                            *_common(tiny_bundle)], capsys)
    assert code == 0 and len(_rows(out)) == 10


class _VanishingCamera:
    """A camera that delivers a few frames and is then unplugged."""

    kind, name, fps, frame_count, width, height, duration_s, dropped = "camera", "0", 30.0, None, 320, 222, None, 0
    live = True

    def __init__(self, frames):
        self.frames, self.i, self.warnings = frames, 0, []

    def __iter__(self):
        return self

    def __next__(self):
        if self.i == len(self.frames):
            raise InputError("camera 0 stopped delivering frames (unplugged?)")
        self.i += 1
        return Frame(self.i - 1, self.i / 30.0, self.frames[self.i - 1], "0")

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        pass


def test_camera_unplugged_keeps_csv(tmp_path, capsys, tiny_bundle, group_photo, monkeypatch):
    import rtfer.capture

    frames = list(pan_frames(group_photo, 6, out_width=320))
    monkeypatch.setattr(rtfer.capture, "open_source", lambda *a, **k: _VanishingCamera(frames))
    out = tmp_path / "cam.csv"
    code, _, err = run_cli(["analyze", "0", "-o", str(out), *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, "camera 0 stopped")
    assert {int(r["frame"]) for r in _rows(out)} == set(range(6))


def test_folder_of_videos_needs_out_dir(tmp_path, capsys, tiny_bundle, group_video):
    import shutil

    shutil.copy(group_video, tmp_path / "v.mp4")
    code, _, err = run_cli(["analyze", str(tmp_path), *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, "--out-dir")


def test_sigint_finalises_csv(tmp_path, tiny_bundle, group_photo):
    from media_helpers import write_test_video

    video = tmp_path / "long.mp4"
    # long enough, and detecting + classifying every frame, so that the run cannot end before the interrupt
    frames = [f for k in range(48) for f in pan_frames(group_photo, 40, out_width=320, start=0 if k % 2 else 300)]
    write_test_video(video, frames, fps=25)
    out = tmp_path / "o.csv"
    # a test run started as a shell background job (`pytest &`) inherits SIGINT ignored, and Python then leaves it
    # ignored (as it should for a background job): give the child the default disposition, as a terminal would
    proc = subprocess.Popen([sys.executable, "-m", "rtfer.cli", "analyze", str(video), "-o", str(out),
                             "--every", "1", "--classify-rate", "all", *_common(tiny_bundle)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    def rows_so_far() -> int:  # the CSV is written beside its final name (.o.PID.part.csv) until the run ends
        files = [out, *tmp_path.glob(f".{out.stem}.*.part{out.suffix}")]
        return max((len(f.read_text().splitlines()) for f in files if f.exists()), default=0)

    deadline = time.time() + 60
    while time.time() < deadline and rows_so_far() < 20 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack: say where it hung
        _, err = proc.communicate()
        pytest.fail(f"rtfer analyze did not stop within 30 s of Ctrl-C; its threads:\n{err[-8000:]}")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    rows = _rows(out)
    frames_done = sorted({int(r["frame"]) for r in rows})
    assert frames_done == list(range(len(frames_done))) and 0 < len(frames_done) < len(frames)


def test_batch_mode_through_the_cli(tmp_path, capsys, tiny_bundle, group_video):
    import shutil

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(group_video, src / "a.mp4")
    shutil.copy(group_video, src / "sub" / "b.mp4")
    (src / "sub" / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["analyze", str(src), "--out-dir", str(out), *_common(tiny_bundle)], capsys)
    assert code == 1, err  # one video failed: the exit status says so, the rest finished
    assert "Traceback" not in err
    assert {int(r["frame"]) for r in _rows(out / "a.csv")} == set(range(24))
    assert (out / "sub" / "b.csv").is_file() and not (out / "sub" / "broken.csv").exists()
    manifest = _rows(out / "manifest.csv")
    assert sorted(r["status"] for r in manifest) == ["failed", "ok", "ok"]
    # resume: nothing to redo but the failed one
    code, stdout, err = run_cli(["analyze", str(src), "--out-dir", str(out), *_common(tiny_bundle)], capsys)
    assert code == 1 and "Traceback" not in err


def test_global_flags_after_the_command(tmp_path, capsys, tiny_bundle, group_video):
    out = tmp_path / "o.csv"
    code, stdout, err = run_cli(["analyze", str(group_video), "-o", str(out), "-q", *_common(tiny_bundle)], capsys)
    assert code == 0, err
    assert stdout == "" and out.is_file()


@pytest.mark.parametrize("damage", [
    lambda d: d["ensemble"].update(method="logistic", coef=[[1.0, 2.0]], intercept=[0.0]),  # wrong shape
    lambda d: d["ensemble"].update(method="soft_vote", weights=[1.0, 2.0, 3.0]),  # 3 weights, 2 members
    lambda d: d["ensemble"].update(method="magic"),
    lambda d: d["members"][0].pop("input_size"),
    lambda d: d["members"][0].update(input_size="big"),
    lambda d: d.update(alignment={"template": [[0.1, 0.2]]}),
    lambda d: d.update(members="ddamfn.onnx"),
])
def test_damaged_bundle_json_is_one_line_and_exit_2(tmp_path, capsys, tiny_bundle, group_video, damage):
    import json
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    meta = json.loads((bad / "bundle.json").read_text())
    damage(meta)
    (bad / "bundle.json").write_text(json.dumps(meta))
    code, _, err = run_cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--bundle", str(bad),
                            "--backend", "onnxruntime", "--device", "cpu", "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err and "internal error" not in err, err
    assert len([x for x in err.strip().splitlines() if x.startswith("rtfer: error")]) == 1, err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("flag", ["-o", "--jsonl", "--annotated"])
def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, capsys, tiny_bundle, group_video, flag):
    import shutil

    video = tmp_path / "s.mp4"
    shutil.copyfile(group_video, video)
    before = video.read_bytes()
    args = ["analyze", str(video), *(["-o", str(tmp_path / "o.csv")] if flag != "-o" else []), flag, str(video)]
    code, _, err = run_cli([*args, *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, "would destroy the input")
    assert video.read_bytes() == before


def test_two_outputs_of_one_run_on_the_same_path_are_refused(tmp_path, capsys, tiny_bundle, group_video):
    same = str(tmp_path / "x.out")
    code, _, err = run_cli(["analyze", str(group_video), "-o", same, "--jsonl", same, *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, "would overwrite")
    assert not (tmp_path / "x.out").exists()


def test_several_inputs_never_share_an_output(tmp_path, capsys, tiny_bundle, group_video, monkeypatch):
    import shutil

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copyfile(group_video, tmp_path / sub / "clip.mp4")
    monkeypatch.chdir(tmp_path)
    a, b = str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4")
    # both would default to clip.csv here
    code, _, err = run_cli(["analyze", a, b, *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, "would overwrite")
    for flag, path in (("--summary", "s.png"), ("--jsonl", "j.jsonl"), ("--annotated", "v.mp4"), ("-o", "o.csv")):
        code, _, err = run_cli(["analyze", a, b, flag, path, *_common(tiny_bundle)], capsys)
        assert_one_line_error(code, err, "several inputs")
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("args, needle", [
    (["--smoothing-strength", "-1"], "smoothing strength"),
    (["--smoothing-strength", "1.5"], "smoothing strength"),
    (["--det-width", "10"], "detection width"),
    (["--det-threshold", "2"], "detector threshold"),
    (["--min-face", "-3"], "minimum face"),
    (["--every", "0"], "every"),
    (["--summary", "{tmp}/x.txt"], "must end in"),
    (["--combiner", "nope"], "has no combiner 'nope' (it has: default"),
])
def test_out_of_range_options_are_refused_before_any_work(tmp_path, capsys, tiny_bundle, group_video, args, needle):
    args = [a.format(tmp=tmp_path) for a in args]
    out = tmp_path / "o.csv"
    code, _, err = run_cli(["analyze", str(group_video), "-o", str(out), *args, *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_audio_only_file_says_it_has_no_video(tmp_path, capsys, tiny_bundle):
    import av

    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    code, _, err = run_cli(["analyze", str(path), "-o", str(tmp_path / "o.csv"), *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, "no video stream")
    assert "damaged" not in err


def test_stream_credentials_never_reach_messages_or_outputs(tmp_path, capsys, tiny_bundle, caplog):
    from rtfer.capture import redact_url

    assert redact_url("rtsp://alice:s3cr3t@10.0.0.1:554/cam") == "rtsp://***@10.0.0.1:554/cam"
    assert redact_url("see http://u:p@h/x and https://h/y") == "see http://***@h/x and https://h/y"
    assert redact_url("/videos/clip@2x.mp4") == "/videos/clip@2x.mp4"
    # a stream that cannot be opened (nothing listens on this loopback port): the error names the URL without it
    url = "rtsp://alice:s3cr3t@127.0.0.1:9/cam"
    code, out, err = run_cli(["analyze", url, "-o", str(tmp_path / "o.csv"), *_common(tiny_bundle)], capsys)
    assert code == 2 and "s3cr3t" not in err + out and "alice" not in err + out, err
    assert "rtsp://***@127.0.0.1:9/cam" in err


def test_info_shows_the_default_bundles_measured_figures(capsys):
    import json

    from rtfer.bundle import BundleSpec, resolve_bundle_path

    spec = BundleSpec.read(resolve_bundle_path("default"))
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0
    metrics = spec.raw["metrics"]
    import re

    for m in spec.members:  # the members table: name, architecture, input size, ..., validation accuracy
        assert re.search(rf"^ +{m.name} +{m.architecture} +{m.input_size}px .* \d+\.\d%", out, re.M), out
    assert re.search(rf"^detector\n +name +{spec.detector}$", out, re.M) and spec.detector == "centerface"
    assert "ablation (validation)" in out and "recall per class" in out
    assert "confusion matrix: " in out and (spec.path / metrics["confusion_png"]).is_file()
    # what the product claims: the shipped ensemble beats each of its members on validation (cross-validated)
    ens = metrics["ensemble"]
    assert ens["cross_validated"] and ens["method"] in ("soft_vote", "logistic")
    assert all(ens["accuracy"] > r["accuracy"] for r in metrics["members"].values()), json.dumps(metrics["members"])
    assert ens["ece"] < 0.1 and ens["ece_tempered"] < 0.1  # calibrated (the temperature minimises NLL, not ECE)
    assert spec.raw["metrics"]["cost_ms_per_face"]["ensemble"] > 0


@pytest.fixture
def http_folder(tmp_path):
    """A loopback HTTP server over tmp_path/www (bounded: torn down with the test)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_recorded_file_over_http_is_analysed_frame_by_frame(tmp_path, capsys, tiny_bundle, group_video,
                                                              http_folder):
    import shutil

    import av

    from rtfer.capture import open_source

    root, base = http_folder
    shutil.copyfile(group_video, root / "clip.mp4")
    with av.open(str(group_video)) as c:
        frames = c.streams.video[0].frames
    url = f"{base}/clip.mp4"
    with open_source(url, drop_frames=None) as src:
        assert src.kind == "remote_video" and not src.live and not src.drop_frames and src.duration_s > 0
    out = tmp_path / "o.csv"
    code, _, err = run_cli(["analyze", url, "-o", str(out), *_common(tiny_bundle)], capsys)
    assert code == 0, err
    assert len({r["frame"] for r in _rows(out)}) == frames  # every frame, none dropped as for a live camera


def test_a_stream_that_delivers_no_frame_is_an_error(tmp_path, capsys, tiny_bundle, monkeypatch):
    import rtfer.capture as capture

    class Silent(capture.Source):
        kind = "stream"

        def _produce_fn(self):
            return lambda reader: None

    def fake_open(spec, **kwargs):
        src = Silent(spec)
        src._start()
        return src

    monkeypatch.setattr(capture, "open_source", fake_open)
    code, _, err = run_cli(["analyze", "rtsp://127.0.0.1:9/cam", "-o", str(tmp_path / "o.csv"),
                            *_common(tiny_bundle)], capsys)
    assert_one_line_error(code, err, "delivered no frame")


def test_rtfer_app_goes_through_the_entry_point_not_an_import(monkeypatch, capsys):
    import importlib.metadata as md

    import rtfer.cli as cli

    assert "ui" not in cli.__dict__ and "rtfer.ui" not in open(cli.__file__).read()
    called = []

    class EP:
        name = "rtfer-app"

        def load(self):
            return lambda argv: called.append(argv) or 0

    monkeypatch.setattr(md, "entry_points", lambda group: [EP()] if group == "console_scripts" else [])
    assert main(["app", "--source", "x.mp4"]) == 0 and called == [["--source", "x.mp4"]]
    monkeypatch.setattr(md, "entry_points", lambda group: [])
    code, _, err = run_cli(["app"], capsys)
    assert code == 2 and "not installed" in err


def test_batch_frames_does_not_change_the_numbers(tmp_path, capsys, tiny_bundle, group_video, monkeypatch):
    """--batch-frames only groups the classifier calls: 1, 3 and 8 frames per call give the same CSV (scores equal
    to float tolerance; frames, times, boxes, IDs and labels identical). The schedule of which faces are classified
    on which frame (--classify-rate) must not depend on how frames were batched either.

    Detection is slower than classification here, so by itself the pipeline would rarely find more than one frame
    ready; the queue below hands out a frame only once a whole batch is waiting, so each run really batches N."""
    import time

    from rtfer import pipeline as pipeline_module
    from rtfer._queues import StopQueue

    class FullBatches(StopQueue):
        want = 1

        def get(self, producer=None):
            deadline = time.monotonic() + 30
            while self._q.qsize() < self.want and producer is not None and producer.is_alive() \
                    and time.monotonic() < deadline:
                time.sleep(0.002)
            return super().get(producer)

    sizes: list[int] = []
    finish = pipeline_module.Pipeline._finish

    def counting_finish(self, batch, *args, **kwargs):
        sizes.append(len(batch))
        return finish(self, batch, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "StopQueue", FullBatches)
    monkeypatch.setattr(pipeline_module.Pipeline, "_finish", counting_finish)
    outputs = {}
    for n in (1, 3, 8):
        FullBatches.want = n
        sizes.clear()
        out = tmp_path / f"b{n}.csv"
        code, _, err = run_cli(["analyze", str(group_video), "-o", str(out), "--batch-frames", str(n),
                                *_common(tiny_bundle)], capsys)
        assert code == 0, err
        assert max(sizes) == n and sum(sizes) == 24 and sizes.count(n) >= 24 // n - 1, sizes
        outputs[n] = _rows(out)
    base = outputs[1]
    assert len(base) >= 48 and {r["frame"] for r in base} == {str(i) for i in range(24)}, "faces in all 24 frames"
    for n in (3, 8):
        rows = outputs[n]
        assert len(rows) == len(base), f"--batch-frames {n}: {len(rows)} rows, {len(base)} with 1"
        assert list(rows[0]) == list(base[0])
        for a, b in zip(base, rows):
            for key, va in a.items():
                vb = b[key]
                try:
                    fa, fb = float(va), float(vb)
                except ValueError:
                    assert va == vb, f"--batch-frames {n}, frame {a['frame']}, face {a['face_id']}: {key}"
                    continue
                assert abs(fa - fb) <= 1e-4 + 1e-4 * abs(fa), \
                    f"--batch-frames {n}, frame {a['frame']}, face {a['face_id']}: {key} {va} != {vb}"


def test_main_in_process_leaves_the_sigterm_handler_as_it_was(capsys):
    from rtfer.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["analyze", "/nonexistent/clip.mp4"]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_bench_writes_its_json_and_checks_outputs_before_the_run(tmp_path, capsys, tiny_bundle, group_video):
    import json

    out = tmp_path / "bench.json"
    bench_args = _common(tiny_bundle)[:-1]  # bench shows no progress bar: no --no-progress
    code, stdout, err = run_cli(["bench", str(group_video), "--frames", "5", "--json", str(out),
                                 *bench_args], capsys)
    assert code == 0, err
    assert "end to end:" in stdout and f"wrote {out}" in stdout
    first = json.loads(out.read_text())
    assert first["frames"] == 5 and first["e2e_fps"] > 0 and {"detect", "infer"} <= set(first["stage_ms"])
    assert run_cli(["bench", str(group_video), "--frames", "3", "--json", str(out), *bench_args],
                   capsys)[0] == 0  # an earlier bench JSON is replaced
    assert json.loads(out.read_text())["frames"] == 3
    mine = tmp_path / "mine.json"
    mine.write_text('{"mine": 1}\n')
    for args, needle in [(["--frames", "0"], "--frames must be >= 1, got 0"),
                         (["--frames", "-5"], "--frames must be >= 1, got -5"),
                         (["--json", str(tmp_path / "no" / "x.json")], "does not exist"),
                         (["--json", str(mine)], "was not written by rtfer: pass --overwrite"),
                         (["--json", str(tmp_path)], "it is a directory"),
                         (["--json", str(group_video), "--overwrite"], "is the input")]:
        t = time.perf_counter()
        code, _, err = run_cli(["bench", str(group_video), *args, *bench_args], capsys)
        assert_one_line_error(code, err, needle)
        assert time.perf_counter() - t < 10  # refused before the run
    assert mine.read_text() == '{"mine": 1}\n' and group_video.stat().st_size > 1000
    code, _, err = run_cli(["bench", str(group_video), "--frames", "2", "--json", str(mine), "--overwrite",
                            *bench_args], capsys)
    assert code == 0 and json.loads(mine.read_text())["frames"] == 2
