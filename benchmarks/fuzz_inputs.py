"""Damaged inputs through `rtfer analyze`: truncations, byte flips, zeroed ranges, wrong containers, image bombs.

    python benchmarks/fuzz_inputs.py [--fixtures ../shared/fixtures/videos] [--per-seed 12] [--seed 0]
                                     [--timeout 60] [--bundle default] [--json OUT.json]

Seeds are small clips and images made here (MPEG-4 and H.264 with B-frames in MP4, AVI, MKV; PNG, JPEG, GIF) plus,
with ``--fixtures``, the first ``--seed-seconds`` of every fixture video (stream copy, so the codec data is real).
Each seed gets ``--per-seed`` mutants drawn with ``--seed`` (the same seed gives the same files), and every run gets
the same image bombs and wrong containers. Every case runs ``rtfer analyze CASE -o OUT.csv --no-progress`` in one
worker process (cases one after another, stderr captured at the file-descriptor level, so a line that a C library
prints is seen); a case that runs past ``--timeout`` seconds is a hang (the worker exits, the next one goes on).

Each case ends as one of: ``ran`` (exit 0, rows), ``warned`` (exit 0, no frame, a warning said so), ``error`` (exit 2,
one ``rtfer: error:`` line), and the failures the goal is zero of: ``internal`` (exit 1: an internal error),
``silent_empty`` (exit 0, no frame decoded, no word), ``hang``, ``noise`` (a stderr line that is not rtfer's own).
Exit status 1 when any failure happened. ``tests/test_fuzz.py`` runs a small set of these in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

FAILURES = ("internal", "silent_empty", "hang", "noise")


# ----------------------------------------------------------------------------------------------------------- seeds
def _frames(n: int, w: int = 96, h: int = 64):
    import numpy as np

    for i in range(n):
        img = np.full((h, w, 3), 70, np.uint8)
        x = (i * 6) % (w - 10)
        img[10:h - 10, x:x + 10] = (40, 180, 230)
        img[:6, :] = (i * 9) % 255
        yield img


def _write_clip(path: Path, codec: str, n: int = 12, options: dict | None = None) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        if options:
            s.codec_context.options = options
        for i, img in enumerate(_frames(n)):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def make_seeds(folder: Path) -> list[Path]:
    """Small well-formed inputs of every kind rtfer reads."""
    import cv2
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    bframes = {"x264-params": "bframes=3:b-adapt=0:keyint=6"}
    seeds = [_write_clip(folder / "mpeg4.mp4", "mpeg4"), _write_clip(folder / "h264.mp4", "libx264", options=bframes),
             _write_clip(folder / "h264.avi", "libx264", options=bframes), _write_clip(folder / "mpeg4.mkv", "mpeg4")]
    img = next(_frames(1, 160, 120))
    for ext in (".png", ".jpg"):
        cv2.imwrite(str(folder / f"image{ext}"), img)
        seeds.append(folder / f"image{ext}")
    frames = [Image.fromarray(f[..., ::-1]) for f in _frames(4, 80, 60)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    seeds.append(folder / "anim.gif")
    return seeds


def fixture_seeds(videos: Path, folder: Path, seconds: float) -> list[Path]:
    """The first ``seconds`` of each fixture video, stream-copied (real codec data, short to analyse)."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for video in sorted(videos.glob("*.mp4")):
        dest = folder / f"fx_{video.stem}.mp4"
        with av.open(str(video)) as src, av.open(str(dest), "w") as dst:
            vin = src.streams.video[0]
            vout = dst.add_stream_from_template(vin)
            for packet in src.demux(vin):
                if packet.dts is None:
                    continue
                if packet.pts is not None and float(packet.pts * vin.time_base) > seconds and packet.is_keyframe:
                    break
                packet.stream = vout
                dst.mux(packet)
        out.append(dest)
    return out


# ---------------------------------------------------------------------------------------------------------- mutants
def _png(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def _gif(w: int, h: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff,"
            + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00;")


def _jpeg_bomb(w: int, h: int, jpeg: bytes) -> bytes:
    """A real JPEG whose SOF0 claims ``w`` x ``h``."""
    i = jpeg.find(b"\xff\xc0")
    return jpeg[:i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9:] if i >= 0 else jpeg


def fixed_cases(seeds: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Image bombs, wrong containers and other inputs every run includes."""
    mp4, png, jpg = seeds.get("mpeg4.mp4", b""), seeds.get("image.png", b""), seeds.get("image.jpg", b"")
    cases = [("bomb_20000.png", _png(20000, 20000)), ("bomb_header.png", _png(1_000_000, 1_000_000)),
             ("bomb_screen.gif", _gif(65535, 65535)), ("bomb_sof.jpg", _jpeg_bomb(60000, 60000, jpg)),
             ("empty.mp4", b""), ("text.mp4", b"not a video at all\n" * 20), ("zeros.mp4", bytes(4096)),
             ("mp4_as.png", mp4), ("png_as.mp4", png), ("jpg_as.avi", jpg), ("png_head_mp4_body.png", png[:64] + mp4),
             ("mp4_head_only.mp4", mp4[:48]), ("random.mkv", random.Random(7).randbytes(3000))]
    return [(name, data) for name, data in cases]


def mutants(name: str, data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """``n`` damaged copies of ``data``: truncations, byte flips, zeroed ranges, a swapped extension."""
    stem, ext = os.path.splitext(name)
    out = []
    kinds = ["truncate", "flip", "zero", "truncate_head", "flip_head", "wrong_ext"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        b = bytearray(data)
        if kind == "truncate":
            b = b[:rng.randrange(1, max(2, len(b)))]
        elif kind == "truncate_head":
            b = b[:rng.randrange(1, min(len(b), 512))]
        elif kind in ("flip", "flip_head"):
            hi = min(len(b), 256) if kind == "flip_head" else len(b)
            for _ in range(rng.choice((1, 4, 32))):
                b[rng.randrange(hi)] ^= rng.randrange(1, 256)
        elif kind == "zero":
            start = rng.randrange(len(b))
            end = min(len(b), start + rng.choice((16, 256, 4096)))
            b[start:end] = bytes(end - start)
        elif kind == "wrong_ext":
            ext_to = rng.choice([e for e in (".mp4", ".avi", ".png", ".jpg", ".mkv", ".gif") if e != ext])
            out.append((f"{stem}_{i}_{kind}{ext_to}", bytes(b)))
            continue
        out.append((f"{stem}_{i}_{kind}{ext}", bytes(b)))
    return out


def build_cases(seed_files: list[Path], folder: Path, per_seed: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    blobs = {p.name: p.read_bytes() for p in seed_files}
    cases = fixed_cases(blobs)
    for name, data in blobs.items():
        cases += mutants(name, data, rng, per_seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in cases:
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------- running
def classify(rc: int, stderr: str, rows: int) -> tuple[str, list[str]]:
    """(outcome, noise lines) of one case."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    noise = [line for line in lines if not line.startswith("rtfer: ")]
    if rc == 2 and any(line.startswith("rtfer: error: ") for line in lines):
        outcome = "error"
    elif rc == 0 and rows > 0:
        outcome = "ran"
    elif rc == 0:
        outcome = "warned" if any(line.lower().startswith("rtfer: warning") for line in lines) else "silent_empty"
    else:
        outcome = "internal"
    return outcome, noise


def _data_rows(csv_path: Path) -> int:
    if not csv_path.is_file():
        return 0
    with open(csv_path, encoding="utf-8", errors="replace") as fh:
        return sum(1 for _ in fh) - 1


def worker(cases: list[str], out_dir: Path, extra: list[str], timeout: float) -> None:
    """Run each case through rtfer.cli.main in this process; one JSON line per case on stdout. A case that runs
    past ``timeout`` is reported as a hang and ends the process (exit 3)."""
    from rtfer.cli import main

    real_out = os.dup(1)
    for i, case in enumerate(cases):
        csv_path = out_dir / f"case{i}.csv"
        done = threading.Event()

        def watchdog(case=case, done=done):
            if not done.wait(timeout):
                os.write(real_out, (json.dumps({"case": case, "outcome": "hang"}) + "\n").encode())
                os._exit(3)

        threading.Thread(target=watchdog, daemon=True).start()
        with tempfile.TemporaryFile() as err:
            sys.stdout.flush()
            sys.stderr.flush()
            saved_err, saved_out = os.dup(2), os.dup(1)
            os.dup2(err.fileno(), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            t0 = time.perf_counter()
            try:
                rc = main(["analyze", case, "-o", str(csv_path), "--no-progress", *extra])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 2
            except BaseException as exc:  # noqa: BLE001 - a crash through main is an internal error
                rc = 1
                os.write(2, f"crash: {type(exc).__name__}: {exc}\n".encode())
            seconds = time.perf_counter() - t0
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_err, 2)
            os.dup2(saved_out, 1)
            os.close(saved_err)
            os.close(saved_out)
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        done.set()
        outcome, noise = classify(rc, stderr, _data_rows(csv_path))
        record = {"case": case, "outcome": outcome, "rc": rc, "rows": _data_rows(csv_path), "seconds": round(seconds, 2),
                  "stderr": stderr.strip()[-400:], "noise": noise[:5]}
        os.write(real_out, (json.dumps(record) + "\n").encode())
        csv_path.unlink(missing_ok=True)


def run_cases(cases: list[Path], *, timeout: float = 60.0, extra: list[str] = (), total_timeout: float | None = None,
              python: str = sys.executable) -> list[dict]:
    """Every case through a worker process; after a hang a new worker goes on with the cases left."""
    results: list[dict] = []
    left = [str(c) for c in cases]
    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    with tempfile.TemporaryDirectory() as tmp:
        while left:
            listing = Path(tmp) / "cases.json"
            listing.write_text(json.dumps(left))
            budget = None if deadline is None else max(1.0, deadline - time.monotonic())
            proc = subprocess.run([python, __file__, "--worker", str(listing), "--out-dir", tmp, "--timeout",
                                   str(timeout), "--", *extra], capture_output=True, text=True, timeout=budget,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            results += got
            done = {r["case"] for r in got}
            left = [c for c in left if c not in done]
            if proc.returncode not in (0, 3) and left:  # the worker itself died: the next case is to blame
                results.append({"case": left[0], "outcome": "internal", "rc": proc.returncode,
                                "stderr": proc.stderr[-400:], "noise": []})
                left = left[1:]
    return results


def summarize(results: list[dict]) -> str:
    counts = Counter(r["outcome"] for r in results)
    noisy = sum(1 for r in results if r.get("noise"))
    lines = [f"{len(results)} cases: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in
                                                   ("ran", "warned", "error", "internal", "silent_empty", "hang")),
             f"cases with stderr lines that are not rtfer's own: {noisy}"]
    for r in results:
        if r["outcome"] in FAILURES or r.get("noise"):
            lines.append(f"  {r['outcome']}: {Path(r['case']).name}: {(r.get('stderr') or '')[-200:]!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", type=Path, help="folder of fixture videos to seed from (first --seed-seconds)")
    p.add_argument("--seed-seconds", type=float, default=1.5)
    p.add_argument("--per-seed", type=int, default=12, help="mutants per seed file (default 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the mutations (default 0)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a case may run before it is a hang")
    p.add_argument("--bundle", default="default")
    p.add_argument("--keep", type=Path, help="write the cases here (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="write every case's result as JSON")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker.read_text()), args.out_dir, args.extra, args.timeout)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        seeds = make_seeds(root / "seeds")
        if args.fixtures:
            seeds += fixture_seeds(args.fixtures, root / "seeds", args.seed_seconds)
        cases = build_cases(seeds, root / "cases", args.per_seed, args.seed)
        t0 = time.perf_counter()
        results = run_cases(cases, timeout=args.timeout, extra=["--bundle", args.bundle])
        print(summarize(results))
        print(f"{time.perf_counter() - t0:.0f} s in all")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    return 1 if any(r["outcome"] in FAILURES or r.get("noise") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
