"""Entry point of the desktop app: ``rtfer-app`` (also ``rtfer app``).

Headless use for docs and checks: ``rtfer-app --source VIDEO --screenshot OUT.png --quit-after SECONDS`` opens the
window, processes the source for that long (or until it ends), saves a screenshot of the whole window and exits 0;
an unreadable source or a processing error prints a one-line message to stderr and exits 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from rtfer.run import BACKENDS, add_live_arguments

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtfer-app", description="rtfer desktop app: live facial-emotion analytics")
    p.add_argument("--source", help="start with this video, image, image folder or camera index")
    p.add_argument("--bundle", help="model bundle name or folder (this session only; Settings stores one)")
    p.add_argument("--backend", choices=("auto", *BACKENDS),
                   help="inference backend (this session only)")
    p.add_argument("--device", help="device for the backend: auto, cpu, cuda, cuda:0 (this session only)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"),
                   help="classifier precision (this session only; auto = INT8 on CPU when the bundle accepted it)")
    p.add_argument("--combiner", help="how the bundle's members combine: default or an alternative it carries, "
                                      "e.g. balanced (this session only)")
    p.add_argument("--fast", action="store_true",
                   help="process files as fast as possible instead of at real time (this session only)")
    p.add_argument("--screenshot", type=Path, help="save a PNG of the window before quitting (with --quit-after)")
    p.add_argument("--screenshot-colors", type=int, default=256, metavar="N",
                   help="palette size of the screenshot PNG (default 256 keeps it small for docs; 0 = full colour)")
    p.add_argument("--quit-after", type=float, metavar="SECONDS",
                   help="quit after processing for this many seconds (or when the source ends)")
    p.add_argument("--settings-file", type=Path, help="use this INI file instead of the user's stored settings")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    add_live_arguments(p.add_argument_group("live outputs (pip install 'rtfer[live]')"))
    return p


def _error(message: str) -> int:
    sys.stderr.write(f"rtfer-app: error: {message}\n")
    return 2


def save_screenshot(window, path: Path, colors: int = 0) -> Path:
    """Grab the whole window into ``path`` (PNG); raises OutputError when it cannot be written.

    ``colors`` > 0 reduces the image to that many palette colours (octree: UI colours stay exact, the video frame
    loses little), which makes a docs screenshot 3-4x smaller than full colour.
    """
    from rtfer.errors import OutputError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the screenshot to {path}: {exc.strerror}") from None
    image = window.grab().toImage()
    if colors > 0:
        from PIL import Image
        from PyQt6.QtGui import QImage

        rgb = image.convertToFormat(QImage.Format.Format_RGB888)
        w, h, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
        pil = Image.frombuffer("RGB", (w, h), bytes(rgb.constBits().asarray(stride * h)), "raw", "RGB", stride, 1)
        try:
            pil.quantize(colors=min(256, colors), method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
        except OSError as exc:
            raise OutputError(f"cannot write the screenshot to {path}: {exc.strerror or exc}") from None
    elif not image.save(str(path), "PNG", 9):
        raise OutputError(f"cannot write the screenshot to {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.screenshot is not None and args.quit_after is None:
        return _error("--screenshot needs --quit-after SECONDS")
    source = args.source
    if source is not None:
        from rtfer.errors import RtferError
        from rtfer.run import check_input

        try:  # fail fast with a plain message, before any window opens
            check_input(source)
        except RtferError as exc:
            return _error(str(exc))
        source = int(source) if source.strip().isdigit() and not Path(source).exists() else source

    live = ExitStack()  # --lsl / --serve: opened before the window, so that a refused address fails fast
    try:
        from rtfer.errors import RtferError
        from rtfer.run import open_live_sinks

        live_sinks = open_live_sinks(live, lsl=args.lsl, serve=args.serve, serve_token=args.serve_token)
    except (RtferError, ImportError) as exc:
        return _error(str(exc))
    with live:
        return _main(args, source, live_sinks)


def _main(args, source, live_sinks: list) -> int:
    for sink in live_sinks:
        where = f"live page at {sink.url}" if hasattr(sink, "url") else f"LSL stream {getattr(sink, 'name', '')!r}"
        sys.stderr.write(f"rtfer-app: {where}\n")
    if args.quit_after is not None and not any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY",
                                                                              "QT_QPA_PLATFORM")):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # headless check without a display server: render offscreen
    try:
        from PyQt6.QtCore import QEvent, QEventLoop, QSettings, QTimer
        from PyQt6.QtWidgets import QApplication
    except ImportError:
        return _error("PyQt6 is required for the desktop app: pip install 'rtfer[ui]'")
    from rtfer.ui.main_window import MainWindow

    owns_app = QApplication.instance() is None
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("rtfer-app")
    app.setOrganizationName("rtfer")
    qsettings = (QSettings(str(args.settings_file), QSettings.Format.IniFormat) if args.settings_file
                 else QSettings("rtfer", "rtfer-app"))
    window = MainWindow(qsettings)
    window.controller.live_sinks = live_sinks
    window.set_overrides(bundle=args.bundle, backend=args.backend, device=args.device, precision=args.precision,
                         combiner=args.combiner, realtime=False if args.fast else None)
    window.show()
    if source is not None:
        window.open_source(source)

    status = {"code": 0, "done": False}
    if args.quit_after is not None:
        started = time.monotonic()
        first_result: list[float] = []

        def finish() -> None:
            if status["done"]:
                return
            status["done"] = True
            window.controller.stop()
            app.processEvents()
            window._on_result()  # show the newest frame that arrived while stopping
            window.timeline.refresh()
            if window.results_shown:  # show the hover read-out at the latest time, as a user would see it
                window.timeline.hover_at(window.timeline.buffer.last_time)  # the newest frame (or image)
            app.processEvents()
            if args.screenshot is not None:
                try:
                    save_screenshot(window, args.screenshot, args.screenshot_colors)
                except Exception as exc:  # noqa: BLE001
                    status["code"] = _error(str(exc))
            if window.last_error and status["code"] == 0:
                status["code"] = _error(window.last_error)
            window.close()  # emits window.closed, which ends the event loop below

        def tick() -> None:
            # The clock starts at the first processed frame (loading the model can take a while), with a cap.
            now = time.monotonic()
            if window.results_shown and not first_result:
                first_result.append(now)
            ended = window.controller.state == "idle" and source is not None and (
                window.results_shown or window.last_error)
            waited = now - (first_result[0] if first_result else started)
            counting = bool(first_result) or source is None
            if ended or (counting and waited >= args.quit_after) or now - started >= args.quit_after + 120:
                QTimer.singleShot(300 if ended else 0, finish)
            else:
                QTimer.singleShot(100, tick)

        QTimer.singleShot(100, tick)
    if owns_app and args.quit_after is None:
        app.exec()
    else:  # headless runs, or a caller's QApplication: a local loop leaves the application usable afterwards
        loop = QEventLoop()
        window.closed.connect(loop.quit)
        loop.exec()
    window.controller.stop()
    window.deleteLater()  # free the Qt objects now, not in a late garbage collection
    app.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    return int(status["code"])


if __name__ == "__main__":
    sys.exit(main())
