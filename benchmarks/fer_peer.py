"""Side by side with the peer tool `fer` (Haar cascade + mini-Xception on TensorFlow): whole processes, same clips.

For each clip both tools run as a whole process, start-up and model loading included, each writing a per-face,
per-frame CSV:

- rtfer: ``rtfer analyze CLIP -o OUT.csv -q`` with default options (extra options: ``--rtfer-args``);
- fer: a small driver run by the venv's Python that imports fer, builds ``FER()`` with its defaults (OpenCV's Haar
  cascade; the mini-Xception model, which fer 25.x runs as a quantised TensorFlow Lite model) and calls
  ``detect_emotions`` on every decoded frame, writing one CSV row per face (what fer's own ``Video.analyze`` does,
  minus its video writing and pandas post-processing).

Reported per clip: video length, whole-process wall time, × real time, faces found per frame (mean and max) for each
tool, and the ratio of the wall times (fer / rtfer: above 1 means rtfer is faster). Markdown on stdout, JSON with
``--json``.

fer and TensorFlow live in a separate virtual environment that this script makes (``--venv``, default
``_data/fer_venv``, git-ignored); they are never rtfer dependencies. fer is installed without its dependencies and
then its declared requirements are installed except facenet-pytorch/torch (only its optional MTCNN detector needs
them; the default Haar path does not), with TensorFlow as ``tensorflow-cpu``.

    python benchmarks/fer_peer.py --setup-only                  # make the venv (network, once)
    python benchmarks/fer_peer.py ../shared/fixtures/videos/*.mp4 --json out/fer_peer.json

Run it on an idle machine: a figure taken while training or tests run is not a figure.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("fer_peer")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / "_data" / "fer_venv"
DEFAULT_CLIPS = REPO.parent / "shared" / "fixtures" / "videos"
FER_VERSION = "25.10.3"
#: fer requirements left out of the venv: only fer's optional MTCNN detector imports them (GBs of CUDA wheels).
SKIP_REQUIREMENTS = {"facenet-pytorch", "torch", "torchvision"}
MARKER = ".rtfer-fer-peer.json"

#: Run by the venv's Python: ``driver.py CLIP OUT.csv`` -> one JSON line on stdout with the faces per frame.
FER_DRIVER = r'''
import csv, json, sys, time
import cv2
try:
    from fer import FER
except ImportError:  # fer 25.x no longer re-exports FER from the package
    from fer.fer import FER

clip, out = sys.argv[1], sys.argv[2]
detector = FER()  # fer's defaults: Haar cascade detector, mini-Xception (25.x: its quantised TFLite copy by default)
cap = cv2.VideoCapture(clip)
if not cap.isOpened():
    sys.exit(f"fer driver: cannot open {clip}")
fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
counts = []
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["frame", "time_s", "x", "y", "w", "h", *labels])
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        faces = detector.detect_emotions(frame)
        counts.append(len(faces))
        t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if not faces:
            w.writerow([n, f"{t:.3f}"] + [""] * 11)
        for face in faces:
            x, y, bw, bh = (int(v) for v in face["box"])
            w.writerow([n, f"{t:.3f}", x, y, bw, bh] + [face["emotions"].get(k, "") for k in labels])
        f.flush()
        n += 1
print(json.dumps({"frames": n, "faces_per_frame": counts}))
'''


_VERSIONS = """
import importlib.metadata as m, json
out = {}
for name in ("fer", "tensorflow-cpu", "keras", "opencv-contrib-python", "opencv-python", "numpy"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


@dataclass
class ToolRun:
    tool: str
    wall_s: float
    frames: int
    faces_mean: float
    faces_max: int
    returncode: int

    def realtime(self, length_s: float) -> float:
        return length_s / self.wall_s if self.wall_s > 0 else 0.0


# ---- the fer venv --------------------------------------------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _pip(py: Path, *args: str) -> None:
    cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    log.info("%s", " ".join(shlex.quote(c) for c in cmd))
    subprocess.run(cmd, check=True)


def ensure_venv(venv: Path, version: str = FER_VERSION) -> Path:
    """The venv's Python with fer ``version`` and TensorFlow CPU installed (made on first use; a marker file records
    what was installed so later runs skip the network)."""
    py = venv_python(venv)
    marker = venv / MARKER
    if py.is_file() and marker.is_file() and json.loads(marker.read_text()).get("fer") == version:
        return py
    if not py.is_file():
        log.info("creating %s", venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _pip(py, "--no-deps", f"fer=={version}")
    reqs = subprocess.run([str(py), "-c", "import importlib.metadata as m, json; "
                                          "print(json.dumps(m.requires('fer') or []))"],
                          check=True, capture_output=True, text=True).stdout
    wanted = []
    for req in json.loads(reqs):
        if "extra ==" in req:
            continue
        spec = req.split(";")[0].strip()
        name = spec.split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("~")[0].strip()
        if name.lower().replace("_", "-") in SKIP_REQUIREMENTS:
            continue
        if name.lower() == "tensorflow":
            spec = spec.replace(name, "tensorflow-cpu", 1)
        wanted.append(spec)
    if not any(w.lower().startswith(("tensorflow-cpu", "tensorflow")) for w in wanted):
        wanted.append("tensorflow-cpu")
    _pip(py, *wanted)
    probe = subprocess.run([str(py), "-c", "from fer.fer import FER; import tensorflow as tf; print(tf.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"fer does not import in {venv}: {probe.stderr.strip().splitlines()[-1:]}")
    versions = subprocess.run([str(py), "-c", _VERSIONS], capture_output=True, text=True).stdout.strip()
    marker.write_text(json.dumps({"fer": version, "installed": json.loads(versions or "{}")}, indent=2) + "\n")
    return py


def venv_versions(venv: Path) -> dict:
    marker = venv / MARKER
    return json.loads(marker.read_text()).get("installed", {}) if marker.is_file() else {}


# ---- runs ------------------------------------------------------------------------------------------------------------

def video_info(clip: Path) -> tuple[float, int, int, int, float]:
    """(length in seconds, frames, width, height, fps) from the container (PyAV)."""
    import av

    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or 0) or 0.0
        frames = int(s.frames or 0)
        if c.duration:
            length = c.duration / 1e6
        elif s.duration and s.time_base:
            length = float(s.duration * s.time_base)
        else:
            length = frames / fps if fps else 0.0
        return length, frames, s.codec_context.width, s.codec_context.height, fps


def rtfer_command(clip: Path, out_csv: Path, extra: list[str]) -> list[str]:
    exe = Path(sys.executable).parent / "rtfer"
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "rtfer.cli"]
    return [*head, "analyze", str(clip), "-o", str(out_csv), "-q", *extra]


def faces_per_frame_rtfer(csv_path: Path) -> list[int]:
    counts: dict[tuple[str, int], int] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (row["source"], int(row["frame"]))
            counts[key] = counts.get(key, 0) + (1 if row.get("face_id", "") != "" else 0)
    return list(counts.values())


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc


def run_rtfer(clip: Path, work: Path, extra: list[str]) -> ToolRun:
    out = work / f"{clip.stem}.rtfer.csv"
    wall, proc = _timed(rtfer_command(clip, out, extra))
    if proc.returncode != 0:
        log.error("rtfer failed on %s: %s", clip.name, proc.stderr.strip()[-300:])
        return ToolRun("rtfer", wall, 0, 0.0, 0, proc.returncode)
    counts = faces_per_frame_rtfer(out)
    return ToolRun("rtfer", wall, len(counts), sum(counts) / max(1, len(counts)), max(counts, default=0), 0)


def run_fer(py: Path, clip: Path, work: Path) -> ToolRun:
    driver = work / "fer_driver.py"
    driver.write_text(FER_DRIVER, encoding="utf-8")
    out = work / f"{clip.stem}.fer.csv"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    wall, proc = _timed([str(py), str(driver), str(clip), str(out)], env)
    if proc.returncode != 0:
        log.error("fer failed on %s: %s", clip.name, proc.stderr.strip()[-300:])
        return ToolRun("fer", wall, 0, 0.0, 0, proc.returncode)
    counts = json.loads(proc.stdout.strip().splitlines()[-1])["faces_per_frame"]
    return ToolRun("fer", wall, len(counts), sum(counts) / max(1, len(counts)), max(counts, default=0), 0)


def compare(clips: list[Path], py: Path, work: Path, extra: list[str], repeats: int = 1) -> list[dict]:
    rows = []
    for clip in clips:
        length, frames, w, h, fps = video_info(clip)
        best: dict[str, ToolRun] = {}
        for _ in range(repeats):  # the fastest of N runs of each tool, alternating so load hits both alike
            for run in (run_rtfer(clip, work, extra), run_fer(py, clip, work)):
                if run.tool not in best or (run.returncode == 0 and run.wall_s < best[run.tool].wall_s):
                    best[run.tool] = run
        r, f = best["rtfer"], best["fer"]
        rows.append({"clip": clip.name, "width": w, "height": h, "fps": round(fps, 3), "frames": frames,
                     "length_s": round(length, 2), "rtfer": asdict(r), "fer": asdict(f),
                     "rtfer_realtime": round(r.realtime(length), 3), "fer_realtime": round(f.realtime(length), 3),
                     "speed_ratio": round(f.wall_s / r.wall_s, 3) if r.wall_s > 0 else None})
        log.info("%s: rtfer %.1f s, fer %.1f s", clip.name, r.wall_s, f.wall_s)
    return rows


def markdown(rows: list[dict], note: str = "") -> str:
    lines = ["| clip | video | length | rtfer wall | rtfer × real time | fer wall | fer × real time | "
             "rtfer speed / fer | faces/frame rtfer (mean, max) | faces/frame fer (mean, max) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["rtfer"], r["fer"]
        fail = lambda t: " (failed)" if t["returncode"] else ""  # noqa: E731
        lines.append(f"| {r['clip']} | {r['width']}×{r['height']} @ {r['fps']:g} fps | {r['length_s']:.1f} s | "
                     f"{a['wall_s']:.1f} s{fail(a)} | {r['rtfer_realtime']:.2f}× | {b['wall_s']:.1f} s{fail(b)} | "
                     f"{r['fer_realtime']:.2f}× | {r['speed_ratio']:.2f}× | {a['faces_mean']:.2f}, {a['faces_max']} | "
                     f"{b['faces_mean']:.2f}, {b['faces_max']} |")
    if note:
        lines += ["", note]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("clips", nargs="*", help=f"video files (default: every .mp4 in {DEFAULT_CLIPS})")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv for fer + TensorFlow (made if missing)")
    p.add_argument("--fer-version", default=FER_VERSION)
    p.add_argument("--setup-only", action="store_true", help="make the fer venv and exit")
    p.add_argument("--rtfer-args", default="", help="extra options for rtfer analyze, e.g. \"--every 2\"")
    p.add_argument("--repeats", type=int, default=1, help="runs per tool and clip; the fastest counts (default 1)")
    p.add_argument("--keep", type=Path, default=None, help="keep the CSVs of both tools in this folder")
    p.add_argument("--json", default="", help="also write the rows as JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="fer_peer: %(message)s")
    clips = [Path(c) for c in a.clips] or sorted(DEFAULT_CLIPS.glob("*.mp4"))
    missing = [str(c) for c in clips if not c.is_file()]
    if not a.setup_only and (missing or not clips):
        print(f"fer_peer: error: no such video: {', '.join(missing) or DEFAULT_CLIPS}", file=sys.stderr)
        return 2
    if a.repeats < 1:
        print("fer_peer: error: --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        py = ensure_venv(a.venv, a.fer_version)
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"fer_peer: error: cannot set up fer in {a.venv}: {exc}", file=sys.stderr)
        return 2
    if a.setup_only:
        print(f"fer venv ready: {py} ({json.dumps(venv_versions(a.venv))})")
        return 0
    work = a.keep or Path(tempfile.mkdtemp(prefix="rtfer-fer-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = compare(clips, py, work, shlex.split(a.rtfer_args), a.repeats)
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = (f"{os.cpu_count()} CPU cores, load average {load:.2f} at the end; fer {a.fer_version} "
            f"({json.dumps(venv_versions(a.venv))}); rtfer options: defaults {a.rtfer_args}".strip())
    print(markdown(rows, note))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "note": note}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
