"""Regenerate the pictures in docs/ from the shipped default bundle, so that they never go stale.

    python docs/make_pictures.py [--fixtures ../shared/fixtures/videos] [--only NAME ...] [--keep DIR]

What it makes (each from the installed rtfer and its built-in ``default`` bundle, on the fixture clips):

- ``summary-mosaic.png``: ``rtfer analyze`` with ``--summary`` on a 2x2 mosaic of the four MIT-licensed labelled
  clips (anger, disgust, fear, happiness playing side by side: four faces). The classroom and portrait fixtures
  state no licence, so nothing made from them enters the repository.
- ``report-mosaic.png``: the same run's ``--report`` page, photographed by headless Chromium.
- ``screenshot-app.png``: ``rtfer-app`` on the mosaic clip in a real X server (``xvfb-run``).
- ``screenshot-app-images.png``: ``rtfer-app`` on a folder of six stills from the labelled clips (per-image view).
- ``confusion-default-bundle.png``: the default bundle's own confusion matrix (``metrics.confusion_png``).

Not made here: ``training-curves-*.png`` and ``recipe-ablation.png`` come from training runs
(``python -m rtfer.training curves``, commands in training/README.md); ``fcmae-reconstructions.png`` from an FCMAE
pretraining run and stills of the four labelled clips (``python -m rtfer.training fcmae-show``, training/README.md); ``live-page.png`` from the live server
(``--serve``). Needs (Debian): ``apt-get install -y xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0
libxkbcommon-x11-0 libxcb-cursor0 chromium``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
#: The four MIT-licensed labelled clips (480x480, 5 s each) tiled 2x2 into the docs' multi-face clip.
MOSAIC_CLIPS = ("anger_diverhansun_01.mp4", "disgust_diverhansun_01.mp4", "fear_diverhansun_01.mp4",
                "happiness_diverhansun_01.mp4")
MOSAIC = "four-clips.mp4"
#: Stills for the image-folder screenshot: (clip, time in seconds, file name), from the MIT-licensed labelled clips.
STILLS = (("anger_diverhansun_01.mp4", 1.5, "01_anger.jpg"),
          ("disgust_diverhansun_01.mp4", 2.0, "02_disgust.jpg"),
          ("fear_diverhansun_01.mp4", 2.0, "03_fear.jpg"),
          ("happiness_diverhansun_01.mp4", 1.0, "04_happiness.jpg"),
          ("anger_diverhansun_01.mp4", 4.0, "05_anger.jpg"),
          ("happiness_diverhansun_01.mp4", 3.5, "06_happiness.jpg"))
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")
PICTURES = ("summary-mosaic", "report-mosaic", "screenshot-app", "screenshot-app-images",
            "confusion-default-bundle")

log = logging.getLogger("make_pictures")


def run(cmd: list[str], **kwargs) -> None:
    log.info("$ %s", " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def rtfer(*args) -> list[str]:
    return [sys.executable, "-m", "rtfer.cli", *args]


def shrink_png(path: Path, colors: int = 256) -> None:
    """A palette PNG (docs pictures stay small; UI colours and text stay exact)."""
    from PIL import Image

    with Image.open(path) as im:  # octree keeps the few flat UI colours exact (median cut merged small swatches)
        small = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def make_mosaic(fixtures: Path, work: Path) -> Path:
    """The four labelled clips tiled 2x2 frame by frame (960x960, 30 fps, as long as the shortest)."""
    import av
    import numpy as np

    out = work / MOSAIC
    containers = [av.open(str(fixtures / c)) for c in MOSAIC_CLIPS]
    try:
        with av.open(str(out), "w") as dst:
            stream = dst.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 960, 960, "yuv420p"
            for frames in zip(*(c.decode(video=0) for c in containers)):
                tiles = [f.to_ndarray(format="rgb24") for f in frames]
                grid = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(grid), format="rgb24")):
                    dst.mux(packet)
            for packet in stream.encode():
                dst.mux(packet)
    finally:
        for c in containers:
            c.close()
    return out


def make_analysis(clip: Path, work: Path) -> Path:
    """The run whose summary PNG and report the docs show; returns the report's path."""
    for name in ("mosaic.csv", "mosaic.html", "summary-mosaic.png"):
        (work / name).unlink(missing_ok=True)
    run(rtfer("analyze", clip.name, "-o", "mosaic.csv", "--summary", "summary-mosaic.png", "--report",
              "mosaic.html", "--no-progress", "-q"), cwd=work)
    shutil.copyfile(work / "summary-mosaic.png", DOCS / "summary-mosaic.png")
    return work / "mosaic.html"


def photograph_page(html: Path, out: Path, width: int = 1280, height: int = 2300) -> None:
    """A headless-Chromium screenshot of a local page (the report makes no network request)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("make_pictures: chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={out}", html.resolve().as_uri()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shrink_png(out)


def app_screenshot(source: Path, out: Path, work: Path, seconds: float, size: str = "1400x1000") -> None:
    """rtfer-app (its window is 1280x860) in a real X server (xvfb-run), with fresh settings (not the user's stored
    ones), so the default bundle and default options show."""
    if shutil.which("xvfb-run") is None:
        raise SystemExit("make_pictures: xvfb-run is not installed (apt-get install -y xvfb xauth ...)")
    settings = work / f"{out.stem}.ini"
    settings.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    run(["xvfb-run", "-a", "-s", f"-screen 0 {size}x24", sys.executable, "-m", "rtfer.ui.app", "--source", source,
         "--screenshot", out, "--quit-after", seconds, "--fast", "--settings-file", settings], env=env)


def make_stills(fixtures: Path, folder: Path) -> Path:
    import av
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for clip, t, name in STILLS:
        with av.open(str(fixtures / clip)) as c:
            for frame in c.decode(video=0):
                if frame.time is not None and frame.time >= t:
                    cv2.imwrite(str(folder / name), frame.to_ndarray(format="bgr24"))
                    break
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures" / "videos")
    p.add_argument("--only", nargs="+", choices=PICTURES, help="make only these pictures")
    p.add_argument("--keep", type=Path, help="keep the intermediate files (CSV, HTML report, stills) here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not all((args.fixtures / c).is_file() for c in MOSAIC_CLIPS):
        raise SystemExit(f"make_pictures: fixture clips not found in {args.fixtures} (use --fixtures)")
    wanted = set(args.only or PICTURES)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        mosaic = make_mosaic(args.fixtures, work) if wanted & {"summary-mosaic", "report-mosaic",
                                                                "screenshot-app"} else None
        if wanted & {"summary-mosaic", "report-mosaic"}:
            report = make_analysis(mosaic, work)
            if "report-mosaic" in wanted:
                photograph_page(report, DOCS / "report-mosaic.png")
        if "screenshot-app" in wanted:
            app_screenshot(mosaic, DOCS / "screenshot-app.png", work, 5)
        if "screenshot-app-images" in wanted:
            app_screenshot(make_stills(args.fixtures, work / "stills"), DOCS / "screenshot-app-images.png", work, 30)
        if "confusion-default-bundle" in wanted:
            from rtfer.bundle import BundleSpec, resolve_bundle_path

            spec = BundleSpec.read(resolve_bundle_path("default"))
            shutil.copyfile(spec.path / spec.raw["metrics"]["confusion_png"], DOCS / "confusion-default-bundle.png")
    for name in sorted(wanted):
        log.info("wrote docs/%s.png", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
