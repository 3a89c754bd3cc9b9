"""The `rtfer` command line: analyze, bench, info, adapt, app.

User errors (bad input, unwritable output, bad bundle, missing backend) end with one line on stderr and exit
status 2; Ctrl-C finalises what was written and exits 130; anything unexpected is one line and exit 1 (``--debug``
shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from rtfer import __version__
from rtfer.capture import redact_url
from rtfer.errors import RtferError

log = logging.getLogger("rtfer.cli")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_NOT_IMPROVED = 3  # rtfer adapt: no candidate beat the base bundle, nothing written


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and detection")
    g.add_argument("--bundle", default="default", help="model bundle: a built-in name or a folder (default: default)")
    from rtfer.backends import BACKENDS
    from rtfer.detection import DETECTORS
    from rtfer.pipeline import DEFAULT_CLASSIFY_RATE, DEFAULT_DET_FACE_PX
    from rtfer.smoothing import METHODS

    g.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                   help="inference backend (default: auto = fastest available; logged)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8"],
                   help="classifier precision (default auto: INT8 on onnxruntime/CPU when the bundle has accepted "
                        "INT8 members, else the backend's own; logged)")
    g.add_argument("--combiner", default="default", metavar="NAME",
                   help="how the bundle's members combine: default (chosen for overall accuracy) or an alternative "
                        "the bundle carries, e.g. balanced (class-balanced: finds rare emotions such as fear and "
                        "disgust more often, at some overall accuracy; rtfer info lists them)")
    g.add_argument("--allow-fallback", action="store_true",
                   help="fall back to CPU when the requested GPU/provider is missing instead of failing")
    g.add_argument("--detector", default="auto", choices=["auto", *DETECTORS],
                   help="face detector (auto: SCRFD when its model file is present, else CenterFace)")
    g.add_argument("--every", type=int, default=3, metavar="N",
                   help="detect every N frames, track faces with optical flow in between (default 3; 1 = every frame)")
    g.add_argument("--max-faces", type=int, default=50, metavar="N", help="keep at most N faces per frame (default 50)")
    g.add_argument("--det-width", type=int, default=640, metavar="PX",
                   help="downscale frames to this width for detection (default 640)")
    g.add_argument("--det-face-px", type=int, default=DEFAULT_DET_FACE_PX, metavar="PX",
                   help=f"with only large faces in view, detect on a frame downscaled until the smallest face is "
                        f"about PX wide, with a full-width pass every second (default {DEFAULT_DET_FACE_PX}; "
                        f"0 = always detect at --det-width)")
    g.add_argument("--min-face", type=int, default=20, metavar="PX", help="drop faces smaller than this (default 20)")
    g.add_argument("--det-threshold", type=float, default=0.5, help="detector score threshold (default 0.5)")
    g.add_argument("--smoothing", default="hmm", choices=list(METHODS),
                   help="temporal smoothing per tracked face (default hmm)")
    g.add_argument("--smoothing-strength", type=float, default=0.5, metavar="S",
                   help="0 (none) .. 1 (very sticky); default 0.5")
    g.add_argument("--batch-frames", type=int, default=8, metavar="N",
                   help="frames whose faces share one inference call on files (default 8, at most 64)")
    from rtfer.smoothing import CONFIDENCE_TEMPERATURE

    g.add_argument("--classify-rate", type=_classify_rate, default=DEFAULT_CLASSIFY_RATE, metavar="K",
                   help=f"classify each tracked face at most K times per second, smoothing carries the frames "
                        f"between (default {DEFAULT_CLASSIFY_RATE:g}; 0 or 'all' = every frame)")
    g.add_argument("--confidence-temperature", type=float, default=CONFIDENCE_TEMPERATURE, metavar="T",
                   help=f"flatten smoothed probabilities: divide log-probabilities by T (default "
                        f"{CONFIDENCE_TEMPERATURE:g} = the model's own confidence, calibrated on FER+ val)")


def _classify_rate(text: str) -> float:
    """``--classify-rate``: a number of classifications per second, or ``all`` (= 0, every frame)."""
    if text.strip().lower() == "all":
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number per second or 'all', got {text!r}") from None


def _options(args):
    from rtfer.pipeline import AnalyzeOptions

    try:
        return AnalyzeOptions(bundle=args.bundle, backend=args.backend, device=args.device, detector=args.detector,
                              every=args.every, max_faces=args.max_faces, det_width=args.det_width,
                              det_face_px=args.det_face_px,
                              min_face=args.min_face, det_threshold=args.det_threshold, smoothing=args.smoothing,
                              smoothing_strength=args.smoothing_strength, batch_frames=args.batch_frames,
                              allow_fallback=args.allow_fallback, precision=args.precision, combiner=args.combiner,
                              classify_rate=args.classify_rate, confidence_temperature=args.confidence_temperature,
                              reconnect_s=getattr(args, "reconnect", None))
    except ValueError as exc:
        raise RtferError(str(exc)) from None


def _add_global_options(p: argparse.ArgumentParser, default) -> None:
    """-v/-q/--debug; on sub-commands their default is SUPPRESS so they never reset what was given earlier."""
    p.add_argument("-v", "--verbose", action="count", default=0 if default is None else default,
                   help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", default=False if default is None else default,
                   help="only errors; no progress bar or summary")
    p.add_argument("--debug", action="store_true", default=False if default is None else default,
                   help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtfer", description="Real-time facial-emotion analytics.")
    parser.add_argument("--version", action="version", version=f"rtfer {__version__}")
    _add_global_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # the same flags are accepted after the command too (`rtfer analyze clip.mp4 -q`)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, argparse.SUPPRESS)

    a = sub.add_parser("analyze", parents=[common], help="analyse videos, images, folders, a webcam or a stream into a CSV timeline",
                       description="Analyse INPUT (video file, image, image folder, webcam index such as 0, or a "
                                   "stream URL) into a per-face, per-frame CSV emotion timeline.")
    a.add_argument("inputs", nargs="+", metavar="INPUT")
    a.add_argument("-o", "--output", metavar="OUT.csv", help="CSV timeline (default: <input name>.csv here)")
    a.add_argument("--raw", action="store_true", help="add unsmoothed raw_<class> columns and raw_emotion")
    a.add_argument("--jsonl", metavar="OUT.jsonl", help="also write JSON Lines (one object per face per frame)")
    a.add_argument("--annotated", metavar="OUT.mp4", help="also write the video with boxes, IDs and labels")
    a.add_argument("--annotated-width", metavar="PX", type=int, default=None,
                   help="width of the annotated video (default: the source's, at most 1920; never upscaled)")
    a.add_argument("--summary", metavar="OUT.png", help="also write a summary plot (emotion/valence over time)")
    a.add_argument("--report", metavar="OUT.html", nargs="?", const="",
                   help="also write a self-contained HTML report (face gallery, room valence, timelines, top "
                        "moments); without a path: beside the CSV. Batch mode: one per video plus OUT_DIR/index.html "
                        "(or the path given)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.add_argument("--reconnect", type=float, default=None, metavar="SECONDS",
                   help="a live stream that drops is reopened with backoff for up to SECONDS, appending to the same "
                        "outputs; the gap is logged and marked in the CSV by a row with an empty frame (default 60; "
                        "0 = end the run when the stream ends)")
    from rtfer.live import add_arguments as add_live_arguments

    add_live_arguments(a.add_argument_group("live outputs (pip install 'rtfer[live]')"))
    b = a.add_argument_group("many videos")
    b.add_argument("--out-dir", metavar="DIR", help="batch mode: one CSV per video, mirroring the input tree")
    b.add_argument("--workers", type=int, default=1, metavar="N", help="batch mode: N worker processes")
    b.add_argument("--ray", metavar="ADDRESS", help="batch mode: run on a Ray cluster (auto, local or host:port)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace existing files that rtfer did not write (an earlier rtfer output is replaced "
                        "anyway); batch mode: also redo videos that already finished")
    b.add_argument("--manifest", metavar="PATH", help="batch mode: manifest CSV (default: OUT_DIR/manifest.csv)")
    b.add_argument("--ray-cpus", type=float, default=1.0, metavar="N", help="Ray: CPUs per video task (default 1)")
    b.add_argument("--ray-gpus", type=float, default=0.0, metavar="N",
                   help="Ray: GPUs per video task; a fraction such as 0.25 shares one GPU between 4 tasks")
    _add_runtime_options(a)

    be = sub.add_parser("bench", parents=[common], help="per-stage timings and frames/s on a video")
    be.add_argument("input", metavar="VIDEO")
    be.add_argument("--frames", type=int, default=300, help="analyse at most this many frames (default 300)")
    be.add_argument("--json", metavar="OUT.json", help="write the measurements as JSON")
    be.add_argument("--overwrite", action="store_true",
                    help="replace an existing --json file that rtfer did not write")
    _add_runtime_options(be)

    i = sub.add_parser("info", parents=[common], help="show the bundle, backends and devices",
                       description="Tables of the bundle's members, ensemble, validation figures, ablation and "
                                   "detector, and of the backends and devices on this machine (--json: all of it "
                                   "as JSON).")
    i.add_argument("--bundle", default="default")
    i.add_argument("--backend", default="auto")
    i.add_argument("--device", default="auto")
    i.add_argument("--json", action="store_true", help="print everything as JSON (for machines)")
    i.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8"])

    _add_adapt_parser(sub, common)
    sub.add_parser("app", help="start the desktop app (same as rtfer-app)", add_help=False)
    return parser


def _add_adapt_parser(sub, common) -> None:
    from rtfer.detection import DETECTORS

    ad = sub.add_parser("adapt", parents=[common], help="adapt a bundle to your setting from a few labelled examples",
                        description="Adapt BUNDLE to EXAMPLES (one sub-folder per emotion: photos, face crops or "
                                    "short clips) and write the adapted bundle to OUT_BUNDLE when it beats the base "
                                    "on held-out folds; exits 3 and writes nothing when it does not.")
    ad.add_argument("examples", metavar="EXAMPLES")
    ad.add_argument("-o", "--output", required=True, metavar="OUT_BUNDLE", help="folder for the adapted bundle")
    ad.add_argument("--bundle", default="default", help="base bundle: a built-in name or a folder (default: default)")
    ad.add_argument("--overwrite", action="store_true", help="replace OUT_BUNDLE when it exists")
    ad.add_argument("--crops", default="auto", choices=["auto", "yes", "no"],
                    help="images are face crops: auto = small (<= 160 px), roughly square images are crops, larger "
                         "ones are photos in which the largest face is detected (default auto)")
    ad.add_argument("--clip-frames", type=int, default=10, metavar="N",
                    help="frames sampled evenly from each video clip (0 = every frame; default 10)")
    ad.add_argument("--detector", default="auto", choices=["auto", *DETECTORS],
                    help="face detector for photos and clips (auto: the bundle's, as analyze uses)")
    ad.add_argument("--method", default="auto",
                    help="auto (best on held-out folds), stacker, prior, finetune, or one candidate such as "
                         "finetune:0.1")
    ad.add_argument("--folds", type=int, default=5, metavar="K", help="cross-validation folds (default 5)")
    ad.add_argument("--seed", type=int, default=0, help="fold assignment seed (default 0)")
    ad.add_argument("--name", help="name of the adapted bundle (default: <base name>-adapted)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:
        return _run_app(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (the HTML report quotes it)
    if not args.command:
        parser.print_help()
        return EXIT_USER_ERROR
    level = logging.ERROR if args.quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="rtfer: %(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the entry point owns the root handler: keep credentials out
        handler.addFilter(_RedactFilter())
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM finalises outputs like Ctrl-C
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        try:
            return _dispatch(args)
        except KeyboardInterrupt:  # one more Ctrl-C while the first was being reported: no traceback
            return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() called in-process (tests, notebooks) leaves no trace
        signal.signal(signal.SIGINT, previous_int)


def _dispatch(args) -> int:
    try:
        if args.command == "analyze":
            return _cmd_analyze(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "info":
            return _cmd_info(args)
        if args.command == "adapt":
            return _cmd_adapt(args)
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the outputs are final: further presses change nothing
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(_interrupted_message(exc), file=sys.stderr)
        return EXIT_INTERRUPTED
    except RtferError as exc:
        if args.debug:
            raise
        print(f"rtfer: error: {redact_url(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ImportError as exc:
        if args.debug:
            raise
        print(f"rtfer: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback, unless --debug
        if args.debug:
            raise
        print(f"rtfer: internal error: {type(exc).__name__}: {redact_url(str(exc))} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return 0


class _RedactFilter(logging.Filter):
    """Rewrites a log record's message with URL credentials hidden (FFmpeg and our own messages quote URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_url(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _run_app(argv: list[str]) -> int:
    """``rtfer app`` runs the ``rtfer-app`` entry point: the runtime never imports the UI package itself."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="console_scripts") if ep.name == "rtfer-app"]
    if not found:
        print("rtfer: error: the desktop app is not installed (pip install 'rtfer[ui]')", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        app_main = found[0].load()
    except ImportError as exc:
        print(f"rtfer: error: the desktop app needs the ui extra (pip install 'rtfer[ui]'): {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return app_main(argv)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupted_message(exc: BaseException) -> str:
    """After Ctrl-C: the outputs that are there (complete up to the last processed frame) and those that are not;
    never an output that was not written (:class:`rtfer.errors.RunInterrupted`)."""
    describe = getattr(exc, "describe", None)  # a batch says what finished (rtfer.errors.BatchInterrupted)
    if describe is not None:
        return redact_url(describe())
    written, missing = getattr(exc, "written", None), getattr(exc, "not_written", None)
    if written is None:
        return "rtfer: interrupted"
    parts = ["rtfer: interrupted"]
    if written:
        parts.append("written up to the last processed frame: " + ", ".join(f"{w} {p}" for p, w in written))
    if missing:
        parts.append("not written: " + ", ".join(f"{w} {p} ({r})" for p, w, r in missing))
    if not written and not missing:
        parts.append("no output was written")
    return redact_url("; ".join(parts))


def _cmd_analyze(args) -> int:
    options = _options(args)
    if args.out_dir or args.ray or args.workers > 1:
        if args.lsl is not None or args.serve is not None:
            raise RtferError("--lsl and --serve run in one process: not with --out-dir, --workers or --ray")
        return _cmd_batch(args, options)
    from contextlib import ExitStack

    from rtfer.pipeline import Pipeline
    from rtfer.run import lock_outputs, plan_outputs, run_file

    if args.annotated_width is not None and args.annotated_width < 16:
        raise RtferError(f"--annotated-width must be >= 16 pixels, got {args.annotated_width}")
    plans = plan_outputs(args.inputs, csv=args.output, jsonl=args.jsonl, annotated=args.annotated,
                         summary_png=args.summary, report=args.report, raw=args.raw, overwrite=args.overwrite,
                         annotated_width=args.annotated_width)
    pipeline = None
    # a second run on one of these paths is refused now, before the models load
    with lock_outputs(plans), ExitStack() as live_stack:
        live = _open_live(args, live_stack)
        for plan in plans:
            if pipeline is None:
                pipeline = Pipeline(options)
                d = pipeline.describe()
                log.info("bundle %s, backend %s on %s, detector %s", d["bundle"], d["backend"], d["device"],
                         d["detector"])
            stats = run_file(plan.input, plan, pipeline=pipeline, options=options,
                             progress=not (args.no_progress or args.quiet), command=_command_line(args), sinks=live)
            if not args.quiet:
                _print_run(stats, pipeline.describe(), plan)
    return 0


def _open_live(args, stack) -> list:
    """The live outputs of ``--lsl`` and ``--serve``, open on ``stack`` (for every input of the command)."""
    from rtfer.live import open_live_sinks

    sinks = open_live_sinks(stack, lsl=args.lsl, serve=args.serve, serve_token=args.serve_token)
    if not args.quiet:
        for sink in sinks:
            if hasattr(sink, "url"):
                ws = "ws" + sink.url[len("http"):]
                print(f"rtfer: live page at {sink.url} (WebSocket {ws}ws, Server-Sent Events {sink.url}events)"
                      + ("; add ?token=TOKEN" if sink.token else ""), file=sys.stderr)
            else:
                print(f"rtfer: LSL stream {sink.name!r} with markers {sink.name + '-markers'!r}", file=sys.stderr)
    return sinks


def _command_line(args) -> str:
    from rtfer.report import command_line

    return command_line(["rtfer", *getattr(args, "argv", sys.argv[1:])])


def _print_run(stats, describe: dict, plan) -> None:
    out = sys.stdout  # the run's warnings were logged when they happened (once; not repeated here)
    if stats.summary is not None and hasattr(stats.summary, "table"):
        print(stats.summary.table(), file=out)
    stages = ", ".join(f"{k} {v:.1f}" for k, v in stats.stage_ms.items() if v > 0)
    print(f"{stats.frames} frames, {stats.faces} faces in {stats.seconds:.1f} s ({stats.fps:.1f} frames/s) "
          f"on {describe['backend']}/{describe['device']}, detector {describe['detector']}; "
          f"mean ms per frame: {stages}", file=out)
    for path, what in getattr(stats, "written", None) or []:  # only the outputs that are there
        print(f"wrote {what}: {path}", file=out)


def _cmd_batch(args, options) -> int:
    from rtfer.batch import run_batch

    if not args.out_dir:
        from rtfer.errors import InputError

        raise InputError("--workers/--ray need --out-dir DIR (one CSV per video)")
    if args.report:
        from rtfer.run import REPORT_FORMATS, check_format

        check_format(args.report, REPORT_FORMATS, "report")
    summary = run_batch(args.inputs, args.out_dir, options, workers=args.workers, ray_address=args.ray,
                        overwrite=args.overwrite, manifest=args.manifest, raw=args.raw,
                        progress=not (args.no_progress or args.quiet), ray_num_cpus=args.ray_cpus,
                        ray_num_gpus=args.ray_gpus, report=args.report)
    if not args.quiet:
        print(summary.table())
        print(summary.status_line())
    return 1 if summary.failed else 0


def _cmd_bench(args) -> int:
    from rtfer.bench import run_bench

    options = _options(args)
    if args.frames < 1:
        raise RtferError(f"--frames must be >= 1, got {args.frames}")
    if args.json:  # checked before the run, which takes a while
        from rtfer.run import check_output_path
        from rtfer.sinks.atomic import check_replace

        check_output_path(args.json, "bench JSON", {Path(args.input).expanduser().resolve(): args.input})
        check_replace(args.json, "bench JSON", overwrite=args.overwrite)
    result = run_bench(args.input, options, max_frames=args.frames)
    print(result.table())
    if args.json:
        from rtfer.sinks.atomic import write_bytes_atomic

        write_bytes_atomic(args.json, (json.dumps(result.to_dict(), indent=2) + "\n").encode(), "bench JSON")
        print(f"wrote {args.json}")
    return 0


def _cmd_adapt(args) -> int:
    from rtfer.adapt import adapt

    if args.clip_frames < 0 or args.folds < 2:
        raise RtferError("--clip-frames must be >= 0 and --folds >= 2")
    result = adapt(args.examples, args.output, bundle=args.bundle, overwrite=args.overwrite, detector=args.detector,
                   crops=args.crops, clip_frames=args.clip_frames, folds=args.folds, seed=args.seed,
                   method=args.method, name=args.name)
    if not args.quiet:
        print(result.table())
    if result.output is None:
        print("rtfer: no adaptation beat the base bundle on the held-out folds; nothing written", file=sys.stderr)
        return EXIT_NOT_IMPROVED
    if not args.quiet:
        print(f"wrote adapted bundle: {result.output} (rtfer analyze VIDEO --bundle {result.output})")
    return 0


def _cmd_info(args) -> int:
    from rtfer.info import collect_info, render_info

    info = collect_info(args.bundle, args.backend, args.device, getattr(args, "precision", "auto"))
    print(json.dumps(info, indent=2) if args.json else render_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
