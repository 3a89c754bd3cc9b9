"""Sinks: CSV / JSONL timelines, annotated video and the end-of-run summary (table + PNG).

Every sink is a context manager with ``open()``, ``append(result: FrameResult)`` and ``close()``. Timelines are
written incrementally in whole-frame batches (at most every ~0.5 s or 50 rows), so an interrupted run leaves a
valid file up to the last flushed frame. Untracked faces (track id -1) get their index within the frame as
``face_id``; a frame without faces gets one row whose face fields are empty.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rtfer.errors import OutputError
from rtfer.labels import CLASSES, NUM_CLASSES, scale_labels, valence
from rtfer.types import FrameResult

log = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = (
    "source", "frame", "time_s", "face_id", "x1", "y1", "x2", "y2", "det_score", *CLASSES,
    "emotion", "confidence", "sentiment5", "sentiment3", "valence",
)
RAW_COLUMNS: tuple[str, ...] = (*(f"raw_{c}" for c in CLASSES), "raw_emotion")
FLUSH_ROWS = 50
FLUSH_SECONDS = 0.5


def columns(raw: bool = False) -> tuple[str, ...]:
    """The timeline schema (DESIGN.md), with the ``--raw`` columns appended when asked."""
    return CSV_COLUMNS + RAW_COLUMNS if raw else CSV_COLUMNS


def _r(x: float, nd: int) -> float:
    """Round for output; -0.0 becomes 0.0."""
    v = round(float(x), nd)
    return 0.0 if v == 0 else v


def result_records(result: FrameResult, *, raw: bool = False, source_name: str | None = None) -> list[dict]:
    """Rows (dicts keyed by :func:`columns`) for one frame: one per face, or one with empty face fields.

    Probabilities, confidence, valence and det_score have 4 decimals, times 3, boxes 1. Empty fields are None.
    """
    cols = columns(raw)
    base = {"source": source_name if source_name is not None else result.source, "frame": int(result.index),
            "time_s": _r(result.time_s, 3)}
    n = len(result.faces)
    if n == 0:
        return [{c: base.get(c) for c in cols}]
    probs = result.smoothed.probs
    top = probs.argmax(axis=1)
    s5 = scale_labels(probs, "sentiment5")
    s3 = scale_labels(probs, "sentiment3")
    val = valence(probs)
    raw_probs = result.raw.probs
    rows = []
    for i in range(n):
        tid = int(result.faces.track_ids[i])
        x1, y1, x2, y2 = (float(v) for v in result.faces.xyxy[i])
        row: dict[str, Any] = dict(base)
        row.update(face_id=tid if tid >= 0 else i, x1=_r(x1, 1), y1=_r(y1, 1), x2=_r(x2, 1), y2=_r(y2, 1),
                   det_score=_r(result.faces.scores[i], 4))
        for k, name in enumerate(CLASSES):
            row[name] = _r(probs[i, k], 4)
        row.update(emotion=CLASSES[top[i]], confidence=_r(probs[i, top[i]], 4), sentiment5=s5[i], sentiment3=s3[i],
                   valence=_r(val[i], 4))
        if raw:
            for k, name in enumerate(CLASSES):
                row[f"raw_{name}"] = _r(raw_probs[i, k], 4)
            row["raw_emotion"] = CLASSES[int(raw_probs[i].argmax())]
        rows.append(row)
    return rows


def _fmt(v: Any, nd: int | None) -> str:
    if v is None:
        return ""
    if nd is not None and isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


_DECIMALS: dict[str, int] = {"time_s": 3, "x1": 1, "y1": 1, "x2": 1, "y2": 1, "det_score": 4, "confidence": 4,
                             "valence": 4, **{c: 4 for c in CLASSES}, **{f"raw_{c}": 4 for c in CLASSES}}


def prepare_output_path(path: Path, what: str, *, written_at_end: bool = False) -> Path:
    """The output path, its folder created; a directory (or, for an output ``written_at_end`` such as a summary or
    report, a folder that cannot be written) is refused now, before any work, with one line."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    if written_at_end and not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write {what} {path}: permission denied")
    return path


class Sink:
    """Base: context manager; ``append`` opens on first use."""

    def __init__(self) -> None:
        self._opened = False
        self._closed = False

    def open(self) -> Sink:
        self._opened = True
        return self

    def append(self, result: FrameResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def _ensure_open(self) -> None:
        if self._closed:
            raise OutputError(f"{type(self).__name__} is closed")
        if not self._opened:
            self.open()

    def __enter__(self) -> Sink:
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TextTimelineSink(Sink):
    """Shared incremental, batch-flushed writing for CSV and JSONL."""

    what = "timeline"

    def __init__(self, path: str | os.PathLike, raw: bool = False, source_name: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.raw = raw
        self.source_name = source_name
        self.rows_written = 0
        self._fh: io.TextIOBase | None = None
        self._buffer: list[str] = []
        self._buffered_rows = 0
        self._last_flush = time.monotonic()

    def _open_file(self, mode: str) -> None:
        path = prepare_output_path(self.path, self.what)
        try:
            self._fh = open(path, mode, newline="", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {self.what} {path}: {exc.strerror or exc}") from None
        self.path = path
        self._opened = True

    def _lines(self, records: list[dict]) -> str:
        raise NotImplementedError

    def append(self, result: FrameResult) -> None:
        """Queue this frame's rows; write and flush them when 50 rows or 0.5 s have accumulated."""
        self._ensure_open()
        records = result_records(result, raw=self.raw, source_name=self.source_name)
        self._buffer.append(self._lines(records))
        self._buffered_rows += len(records)
        if self._buffered_rows >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered whole frames and flush them to the OS."""
        if self._fh is None:
            return
        if self._buffer:
            try:
                self._fh.write("".join(self._buffer))
                self._fh.flush()
            except OSError as exc:
                raise OutputError(f"cannot write {self.what} {self.path}: {exc.strerror or exc}") from None
            self.rows_written += self._buffered_rows
            self._buffer.clear()
            self._buffered_rows = 0
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            self._closed = True


class CSVSink(_TextTimelineSink):
    """Per-face-per-frame CSV timeline in the DESIGN.md schema (``raw=True`` adds ``raw_<class>``, ``raw_emotion``).

    ``append=True`` continues an existing file; its header must match the schema exactly, else OutputError.
    """

    what = "CSV"

    def __init__(self, path: str | os.PathLike, raw: bool = False, source_name: str | None = None, *,
                 append: bool = False) -> None:
        super().__init__(path, raw, source_name)
        self.append_mode = append
        self.columns = columns(raw)

    def open(self) -> CSVSink:
        if self._opened:
            return self
        path = Path(self.path).expanduser()
        header = ",".join(self.columns)
        if self.append_mode and path.is_file() and path.stat().st_size > 0:
            with open(path, newline="", encoding="utf-8") as fh:
                existing = next(csv.reader(fh), [])
            if tuple(existing) != self.columns:
                extra = sorted(set(existing) ^ set(self.columns))
                raise OutputError(f"cannot append to {path}: its header does not match the timeline schema"
                                  f"{' (differs in ' + ', '.join(extra[:6]) + ')' if extra else ' (column order)'}")
            self._open_file("a")
        else:
            self._open_file("w")
            self._fh.write(header + "\n")
            self._fh.flush()
        return self

    def _lines(self, records: list[dict]) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for rec in records:
            writer.writerow([_fmt(rec[c], _DECIMALS.get(c)) for c in self.columns])
        return out.getvalue()


class JSONLSink(_TextTimelineSink):
    """One JSON object per face per frame (same fields as the CSV; empty fields are null)."""

    what = "JSONL"

    def open(self) -> JSONLSink:
        if not self._opened:
            self._open_file("w")
        return self

    def _lines(self, records: list[dict]) -> str:
        return "".join(json.dumps(rec, separators=(",", ":")) + "\n" for rec in records)


#: Audio codecs copied into an MP4/MOV as they are (others are re-encoded); other containers copy what they accept.
_MP4_AUDIO_COPY = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
_AUDIO_ENCODERS = ("aac", "libopus", "libvorbis", "mp2")


class AnnotatedVideoSink(Sink):
    """Writes each ``FrameResult.image`` with boxes, track ids, labels and confidences (PyAV, H.264 or MPEG-4).

    Presentation times follow ``FrameResult.time_s`` (so a variable-frame-rate input stays in sync); frames whose
    time does not increase (image folders) are spaced 1/fps apart. Frames of another size are resized to the first.
    ``audio_from``: a video file whose first audio stream is carried over, remuxed packet by packet (no re-encoding)
    when the output container accepts its codec, re-encoded (AAC) otherwise; it is interleaved with the video as the
    frames come, and stops where the video stops. Frames arrive upright (capture applies a phone clip's rotation), so
    the output needs no rotation flag.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = 30.0, *, scale: str = "emotion",
                 codec: str | None = None, audio_from: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.scale = scale
        self.codec = codec
        self.frames_written = 0
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self._tb = Fraction(1, 1000)
        self.audio_from = audio_from
        self.audio_mode: str | None = None  # "copy" | "encode" once an audio stream is set up
        self._audio: dict[str, Any] | None = None

    def open(self) -> AnnotatedVideoSink:
        if self._opened:
            return self
        import av

        path = prepare_output_path(self.path, "video")
        options = {"movflags": "faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        try:
            self._container = av.open(str(path), "w", options=options)
        except Exception as exc:  # noqa: BLE001 - FFmpeg errors for bad paths/extensions
            raise OutputError(f"cannot write video {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        self.path = path
        self._opened = True
        return self

    def _add_stream(self, w: int, h: int) -> None:
        import av

        codecs = [self.codec] if self.codec else ["libx264", "mpeg4"]
        for name in codecs:
            try:
                av.codec.Codec(name, "w")
            except Exception:  # noqa: BLE001
                continue
            stream = self._container.add_stream(name, rate=Fraction(self.fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.time_base = self._tb
            stream.codec_context.time_base = self._tb
            if name == "libx264":
                stream.options = {"preset": "veryfast", "crf": "23"}
            self._stream = stream
            self._size = (w, h)
            if self.audio_from is not None:
                self._add_audio()
            return
        raise OutputError(f"cannot write video {self.path}: no encoder among {codecs}")

    accepts_annotated = True  # the run layer passes the frame the app already annotated for display

    def append(self, result: FrameResult, annotated: np.ndarray | None = None) -> None:
        """Encode ``result``'s frame, annotated here unless ``annotated`` (the same frame, already annotated) is
        given."""
        import av
        import cv2

        self._ensure_open()
        if annotated is not None:
            image = annotated
        else:
            from rtfer.annotate import annotate

            if result.image is None:
                raise ValueError("AnnotatedVideoSink needs FrameResult.image (ask the pipeline to keep frames)")
            image = annotate(result.image, result, self.scale)
        if self._stream is None:
            h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
            self._add_stream(w, h)
        w, h = self._size
        if image.shape[:2] != (h, w):
            if abs(image.shape[0] - h) <= 1 and abs(image.shape[1] - w) <= 1:
                image = image[:h, :w]
            else:
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        pts = int(round(float(result.time_s) / self._tb))
        if pts <= self._last_pts:
            pts = self._last_pts + max(1, int(round(1 / (self.fps * self._tb))))
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts, frame.time_base = pts, self._tb
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            if self._audio is not None:
                self._mux_audio(pts * self._tb + 0.5)
        except Exception as exc:  # noqa: BLE001
            raise OutputError(f"cannot write video {self.path}: {exc}") from None
        self.frames_written += 1

    # -- audio ------------------------------------------------------------------------------------------------------
    def _add_audio(self) -> None:
        """Add an audio stream like ``audio_from``'s first one (before anything is muxed); no audio = no stream."""
        import av

        try:
            inp = av.open(str(self.audio_from))
        except Exception as exc:  # noqa: BLE001 - the video itself was readable; the audio is a bonus
            log.warning("annotated video: cannot read the audio of %s (%s)", self.audio_from, exc)
            return
        if not inp.streams.audio:
            inp.close()
            return
        ain = inp.streams.audio[0]
        vin = inp.streams.video[0] if inp.streams.video else None
        # capture times start at the video stream's first frame: the audio is shifted by the same offset
        offset = float(vin.start_time * vin.time_base) if vin is not None and vin.start_time is not None else 0.0
        name = ain.codec_context.name
        supported = getattr(self._container, "supported_codecs", set())
        mp4 = self.path.suffix.lower() in (".mp4", ".mov", ".m4v")
        try:
            if name in supported and (name in _MP4_AUDIO_COPY or not mp4):
                out = self._container.add_stream_from_template(ain)
                mode = "copy"
            else:
                enc = next((e for e in _AUDIO_ENCODERS if e in supported and _has_encoder(e)), None)
                if enc is None:
                    raise ValueError(f"no audio encoder for {self.path.suffix or 'this container'}")
                out = self._container.add_stream(enc, rate=ain.codec_context.sample_rate or 48000)
                if ain.codec_context.layout is not None:
                    out.codec_context.layout = ain.codec_context.layout.name
                mode = "encode"
        except Exception as exc:  # noqa: BLE001
            log.warning("annotated video: the audio (%s) is left out: %s", name, exc)
            inp.close()
            return
        self.audio_mode = mode
        self._audio = {"in": inp, "stream": ain, "out": out, "offset": offset, "packets": inp.demux(ain),
                       "pending": None, "done": False}
        log.info("annotated video: audio %s %s", name, "copied" if mode == "copy" else f"re-encoded as {out.name}")

    def _mux_audio(self, until_s: float | None) -> None:
        """Mux the source's audio up to ``until_s`` seconds (video time; None = all of it)."""
        a = self._audio
        if a is None or a["done"]:
            return
        ain, out, offset = a["stream"], a["out"], a["offset"]
        shift = int(round(offset / ain.time_base)) if ain.time_base else 0
        while True:
            packet = a["pending"]
            if packet is None:
                try:
                    packet = next(a["packets"])
                except (StopIteration, Exception):  # noqa: BLE001 - a damaged audio tail ends the audio
                    a["done"] = True
                    break
                if packet.pts is None or packet.size == 0:
                    continue
            t = float((packet.pts - shift) * ain.time_base)
            if until_s is not None and t > until_s:
                a["pending"] = packet
                return
            a["pending"] = None
            if t < 0:
                continue
            if self.audio_mode == "copy":
                packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                packet.stream = out
                self._container.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    for p in out.encode(frame):
                        self._container.mux(p)
        if self.audio_mode == "encode":
            for p in out.encode(None):
                self._container.mux(p)

    def _close_audio(self) -> None:
        a, self._audio = self._audio, None
        if a is not None:
            a["in"].close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            if self._audio is not None:  # up to the end of the last frame
                self._mux_audio(self._last_pts * self._tb + 1.0 / self.fps)
                a = self._audio
                if self.audio_mode == "encode" and not a["done"]:
                    a["done"] = True
                    for p in a["out"].encode(None):
                        self._container.mux(p)
        finally:
            self._close_audio()
            self._container.close()
            self._container = None
        if self.frames_written == 0:
            log.warning("annotated video %s has no frames", self.path)


def _has_encoder(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001
        return False


# -- summary ---------------------------------------------------------------------------------------------------------
@dataclass
class FaceSummary:
    """Totals for one face (track). For an image folder a face is one image's face: ``source`` names the image."""

    face_id: int
    frames: int
    seconds: float
    first_s: float
    last_s: float
    dominant: str
    dominant_share: float
    mean_valence: float
    shares: dict[str, float]
    source: str | None = None
    key: int | None = None  # the accumulator's key for this face (its series); the face id for a single source
    mean_probs: dict[str, float] | None = None

    def label(self, per_image: bool = False) -> str:
        """``face 3``, or ``img.jpg face 0`` when faces come from several images."""
        return f"{self.source} face {self.face_id}" if per_image and self.source else f"face {self.face_id}"


@dataclass
class Summary:
    """What the CLI prints at the end of a run."""

    frames: int
    frames_without_faces: int
    faces: list[FaceSummary] = field(default_factory=list)
    per_image: bool = False  # faces come from several independent images (a folder): one row per image's face
    end_s: float = 0.0  # the last frame's time

    def table(self) -> str:
        return summary_table(self)

    def by_screen_time(self) -> list[FaceSummary]:
        """Faces with the most time on screen first (then the most frames, then the lowest id)."""
        return sorted(self.faces, key=lambda f: (-round(f.seconds, 1), -f.frames, f.source or "", f.face_id))


def summary_table(summary: Summary, *, max_rows: int = 50) -> str:
    """Fixed-width table: per face frames, seconds, dominant emotion, its share and mean valence."""
    faces = sorted(summary.faces, key=lambda f: (-f.frames, f.source or "", f.face_id))
    if summary.per_image:
        width = max([6] + [len(f.label(True)) for f in faces[:max_rows]])
        head = f"{'face':<{width}}  {'dominant':<10}  {'conf':>6}  {'valence':>7}"
        lines = [head]
        for f in faces[:max_rows]:
            conf = (f.mean_probs or {}).get(f.dominant, f.dominant_share)
            lines.append(f"{f.label(True):<{width}}  {f.dominant:<10}  {conf:>6.1%}  {f.mean_valence:>+7.3f}")
    else:
        head = f"{'face':>6}  {'frames':>7}  {'seconds':>8}  {'dominant':<10}  {'share':>6}  {'valence':>7}"
        lines = [head]
        for f in faces[:max_rows]:
            lines.append(f"{f.face_id:>6}  {f.frames:>7}  {f.seconds:>8.1f}  {f.dominant:<10}  {f.dominant_share:>6.1%}"
                         f"  {f.mean_valence:>+7.3f}")
    if len(faces) > max_rows:
        lines.append(f"... {len(faces) - max_rows} more faces")
    lines.append(f"{summary.frames} frames, {summary.frames_without_faces} without faces, {len(faces)} faces")
    return "\n".join(lines)


class _Totals:
    """Constant-size per-face totals (kept for every face)."""

    __slots__ = ("frames", "seconds", "first", "last", "counts", "valence_sum", "prob_sum", "source", "face_id")

    def __init__(self, t: float, source: str | None, face_id: int) -> None:
        self.frames = 0
        self.seconds = 0.0
        self.first = t
        self.last = t
        self.counts = [0] * NUM_CLASSES
        self.valence_sum = 0.0
        self.prob_sum = np.zeros(NUM_CLASSES, dtype=np.float64)
        self.source = source
        self.face_id = face_id


#: Keys of faces from a second, third... source (image folders) start here, far above any track id.
_OTHER_SOURCE_KEYS = 1 << 40


class SummaryAccumulator:
    """Per-face totals plus a binned time series for the longest faces and for the room, in bounded memory.

    Series share one time grid of at most ``max_bins`` bins; when a time falls beyond the last bin, the bin width
    doubles and neighbouring bins merge, so a 10-hour video costs the same as a 10-second one. Full series are kept
    for at most ``max_series`` faces (the ones seen most); totals (a few numbers each) for every face. The room series
    holds, per bin, the mean over frames of the mean valence of the faces in view, and the mean number of faces.
    Faces are told apart by (source, id): an image folder's "face 0" of unrelated images are different faces.
    """

    def __init__(self, *, max_bins: int = 256, max_series: int = 16, initial_bin_s: float = 0.25,
                 gap_cap_s: float = 1.0) -> None:
        if max_bins < 2 or max_bins % 2:
            raise ValueError("max_bins must be an even number >= 2")
        self.max_bins = max_bins
        self.max_series = max_series
        self.bin_s = float(initial_bin_s)
        self.gap_cap_s = gap_cap_s
        self.t0: float | None = None
        self.t_end = 0.0  # the latest frame time seen (with or without faces)
        self.frames = 0
        self.frames_without_faces = 0
        self.totals: dict[int, _Totals] = {}
        # per face: (max_bins, 7) prob sums, (max_bins,) valence sums, (max_bins,) counts
        self.series: dict[int, np.ndarray] = {}
        # the room: per bin, sum of frame-mean valence, frames with faces, sum of face counts
        self.room = np.zeros((max_bins, 3), dtype=np.float64)
        self._first_source: str | None = None
        self._sources: set[str | None] = set()
        self._other_keys: dict[tuple[str | None, int], int] = {}

    @property
    def per_image(self) -> bool:
        """True when faces came from more than one source (an image folder)."""
        return len(self._sources) > 1

    def update(self, result: FrameResult) -> None:
        """Add one frame (smoothed scores)."""
        ids = np.asarray(result.faces.track_ids)
        ids = np.where(ids >= 0, ids, np.arange(len(ids)))
        self.add(float(result.time_s), ids, result.smoothed.probs, source=result.source)

    def key(self, source: str | None, face_id: int) -> int:
        """The accumulator's key of face ``face_id`` of ``source`` (the id itself for the first source)."""
        if not self._sources:
            self._first_source = source
        self._sources.add(source)
        if source == self._first_source:
            return int(face_id)
        k = self._other_keys.get((source, int(face_id)))
        if k is None:
            k = self._other_keys[(source, int(face_id))] = _OTHER_SOURCE_KEYS + len(self._other_keys)
        return k

    def add(self, time_s: float, face_ids: np.ndarray, probs: np.ndarray, *, source: str | None = None) -> None:
        """Array form of :meth:`update`: ``face_ids`` (n,), ``probs`` (n, 7), the frame's ``source`` name."""
        self.frames += 1
        self.t_end = max(self.t_end, float(time_s))
        if len(face_ids) == 0:
            self.frames_without_faces += 1
            return
        if self.t0 is None:
            self.t0 = time_s
        b = self._bin(time_s)
        probs = np.asarray(probs, dtype=np.float64)
        vals = valence(probs)
        tops = probs.argmax(axis=1)
        self.room[b] += (float(np.mean(vals)), 1.0, float(len(face_ids)))
        for fid, p, v, top in zip(np.asarray(face_ids).tolist(), probs, vals.tolist(), tops.tolist()):
            key = self.key(source, fid)
            tot = self.totals.get(key)
            if tot is None:
                tot = self.totals[key] = _Totals(time_s, source, int(fid))
            elif time_s > tot.last:
                tot.seconds += min(time_s - tot.last, self.gap_cap_s)
            tot.frames += 1
            tot.last = max(tot.last, time_s)
            tot.counts[top] += 1
            tot.valence_sum += v
            tot.prob_sum += p
            s = self._series_for(key)
            if s is not None:
                s[b, :NUM_CLASSES] += p
                s[b, NUM_CLASSES] += v
                s[b, NUM_CLASSES + 1] += 1

    def _bin(self, time_s: float) -> int:
        b = int((time_s - self.t0) // self.bin_s) if time_s > self.t0 else 0
        while b >= self.max_bins:
            half = self.max_bins // 2
            for s in [*self.series.values(), self.room]:
                merged = s.reshape(half, 2, -1).sum(axis=1)
                s[:half] = merged
                s[half:] = 0
            self.bin_s *= 2
            b = int((time_s - self.t0) // self.bin_s)
        return b

    def _series_for(self, key: int) -> np.ndarray | None:
        s = self.series.get(key)
        if s is not None:
            return s
        if len(self.series) >= self.max_series:
            # replace the shortest kept face when this one has been seen more often
            shortest = min(self.series, key=lambda k: self.totals[k].frames)
            if self.totals[key].frames <= self.totals[shortest].frames + 10:
                return None
            del self.series[shortest]
        s = self.series[key] = np.zeros((self.max_bins, NUM_CLASSES + 2), dtype=np.float64)
        return s

    def nbytes(self) -> int:
        """Approximate memory held (series arrays plus totals)."""
        per_total = 200
        return sum(s.nbytes for s in self.series.values()) + self.room.nbytes + per_total * len(self.totals)

    def summary(self) -> Summary:
        faces = []
        for key, tot in self.totals.items():
            shares = {c: n / tot.frames for c, n in zip(CLASSES, tot.counts)}
            dom = max(shares, key=shares.get)
            seconds = tot.seconds + (tot.seconds / max(tot.frames - 1, 1) if tot.frames > 1 else 0.0)
            mean_probs = {c: float(v) for c, v in zip(CLASSES, tot.prob_sum / tot.frames)}
            faces.append(FaceSummary(tot.face_id, tot.frames, seconds, tot.first, tot.last, dom, shares[dom],
                                     tot.valence_sum / tot.frames, shares, source=tot.source, key=key,
                                     mean_probs=mean_probs))
        return Summary(self.frames, self.frames_without_faces, faces, per_image=self.per_image, end_s=self.t_end)

    def binned(self, face_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin start times, mean probs (B, 7), mean valence (B,)) for the bins where the face was seen.

        ``face_id`` is the accumulator's key (:attr:`FaceSummary.key`; the face id itself for a single source)."""
        s = self.series[face_id]
        seen = s[:, NUM_CLASSES + 1] > 0
        counts = s[seen, NUM_CLASSES + 1:NUM_CLASSES + 2]
        times = (self.t0 or 0.0) + np.flatnonzero(seen) * self.bin_s
        return times, s[seen, :NUM_CLASSES] / counts, s[seen, NUM_CLASSES] / counts[:, 0]

    def room_binned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin start times, mean valence of the faces in view (B,), mean number of faces in view (B,)) for the bins
        with at least one face."""
        seen = self.room[:, 1] > 0
        n = self.room[seen, 1]
        times = (self.t0 or 0.0) + np.flatnonzero(seen) * self.bin_s
        return times, self.room[seen, 0] / n, self.room[seen, 2] / n


class SummarySink(Sink):
    """Accumulates a bounded summary and, on close, writes a PNG (``png_path``; None = table only).

    The PNG has three panels: valence over time per face, the dominant emotion over time per face (a colour band per
    face) and the share of frames per emotion per face; for an image folder, one row per image's face with its
    class probabilities. ``summary()`` gives the table the CLI prints. ``title`` names the clip and the bundle;
    ``duration_s`` (the clip's length, when known) ends the time axis.
    """

    def __init__(self, png_path: str | os.PathLike | None = None, *, title: str | None = None,
                 accumulator: SummaryAccumulator | None = None, duration_s: float | None = None) -> None:
        super().__init__()
        self.png_path = Path(png_path) if png_path is not None else None
        self.title = title
        self.duration_s = duration_s
        self.acc = accumulator or SummaryAccumulator()

    def open(self) -> SummarySink:
        if self.png_path is not None:
            self.png_path = prepare_output_path(self.png_path, "summary", written_at_end=True)
        self._opened = True
        return self

    def append(self, result: FrameResult) -> None:
        self._ensure_open()
        self.acc.update(result)

    def summary(self) -> Summary:
        return self.acc.summary()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.png_path is not None:
            write_summary_png(self.acc, self.png_path, title=self.title, duration_s=self.duration_s)


def run_title(source_name: str, bundle: str | None = None) -> str:
    """The title of a run's summary and report: the clip, then the bundle."""
    return f"{source_name} \u2014 bundle {bundle}" if bundle else source_name


def write_summary_png(acc: SummaryAccumulator, path: str | os.PathLike, *, title: str | None = None,
                      max_faces: int = 12, duration_s: float | None = None, max_image_faces: int = 60) -> Path:
    """Render the summary figure with matplotlib's Agg backend (imported here, no GUI needed).

    Shows the ``max_faces`` faces with the most time on screen and says how many more there were. The time axis runs
    from 0 to the end of the clip (``duration_s``, else the last frame). Legends sit outside the data. Image folders:
    one row per image's face, in file order, at most ``max_image_faces``.
    """
    from matplotlib.figure import Figure

    summary = acc.summary()
    if summary.per_image:
        ranked = sorted(summary.faces, key=lambda f: (f.source or "", f.face_id))
        faces = ranked[:max_image_faces]
    else:
        ranked = summary.by_screen_time()
        faces = ranked[:max_faces]
    hidden = len(ranked) - len(faces)
    fig = (_image_figure(summary, faces, Figure) if summary.per_image
           else _video_figure(acc, faces, Figure, duration_s))
    heading = title or ("no faces found" if not ranked else None)
    if hidden:
        note = (f"the first {len(faces)} image faces shown; {hidden} more not shown (all are in the CSV)"
                if summary.per_image else f"{len(faces)} faces with the most screen time shown; {hidden} more not shown")
        heading = f"{heading}\n{note}" if heading else note
    if heading:
        fig.suptitle(heading, fontsize=11)
    path = Path(path)
    try:
        fig.savefig(path, bbox_inches="tight")
    except OSError as exc:
        raise OutputError(f"cannot write summary {path}: {exc.strerror or exc}") from None
    return path


def emotion_runs(times: np.ndarray, probs: np.ndarray, bin_s: float) -> list[tuple[float, float, str]]:
    """Binned series -> ``(start, width, dominant class)`` runs: neighbouring bins with the same dominant class are
    one bar (no seams between bins, a smaller plot); a gap where the face was out of view ends a run."""
    runs: list[list] = []
    for t, k in zip(np.asarray(times, dtype=np.float64).tolist(), np.asarray(probs).argmax(axis=1).tolist()):
        name = CLASSES[k]
        if runs and runs[-1][2] == name and abs(runs[-1][0] + runs[-1][1] - t) < 1e-6 * max(1.0, t) + 1e-9:
            runs[-1][1] += bin_s
        else:
            runs.append([t, bin_s, name])
    return [(a, b, c) for a, b, c in runs]


def _emotion_handles():
    from matplotlib.patches import Patch

    from rtfer.colors import color_rgb01

    return [Patch(facecolor=color_rgb01(c), edgecolor="0.4", linewidth=0.4, label=c) for c in CLASSES]


def _video_figure(acc: SummaryAccumulator, faces: list[FaceSummary], Figure, duration_s: float | None):
    from rtfer.colors import color_rgb01

    n = max(len(faces), 1)
    rows_in = 0.3 * n + 0.9
    fig = Figure(figsize=(11, 3.0 + 2 * rows_in + 0.6), dpi=100, layout="constrained")
    gs = fig.add_gridspec(3, 1, height_ratios=[3.0, rows_in, rows_in])
    ax_val, ax_dom, ax_share = fig.add_subplot(gs[0]), fig.add_subplot(gs[1]), fig.add_subplot(gs[2])
    if len(faces) > 10:  # more lines than the default 10-colour cycle: 20 colours
        from matplotlib import colormaps

        ax_val.set_prop_cycle(color=[colormaps["tab20"](i) for i in range(20)])
    colors = {c: color_rgb01(c) for c in CLASSES}
    end = max(float(duration_s or 0.0), acc.t_end, 1e-3)
    labels = [f.label() for f in faces]

    plotted = [f for f in faces if f.key in acc.series]
    for f in plotted:
        t, _, v = acc.binned(f.key)
        ax_val.plot(t + acc.bin_s / 2, v, lw=1.2, label=f.label())
    if len(faces) > 1:
        rt, rv, _ = acc.room_binned()
        ax_val.plot(rt + acc.bin_s / 2, rv, lw=2.4, color="black", alpha=0.75, label="room mean")
    ax_val.axhline(0, color="0.6", lw=0.8)
    ax_val.set_ylim(-1.05, 1.05)
    ax_val.set_xlim(0, end)
    ax_val.set_ylabel("valence")
    ax_val.set_xlabel("time (s)")
    ax_val.set_title("valence over time (\u22121 negative \u2026 +1 positive)")
    if plotted:
        ax_val.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
                      ncol=1 if len(plotted) <= 13 else 2)

    for row, f in enumerate(faces):
        if f.key not in acc.series:
            ax_dom.text(0.01 * end, row, "(timeline not kept)", va="center", fontsize=7, color="0.4")
            continue
        t, p, _ = acc.binned(f.key)
        runs = emotion_runs(t, p, acc.bin_s)
        if runs:
            ax_dom.broken_barh([(a, b) for a, b, _ in runs], (row - 0.4, 0.8),
                               facecolors=[colors[c] for _, _, c in runs], linewidth=0)
    ax_dom.set_yticks(range(len(faces)), labels)
    ax_dom.set_ylim(-0.6, n - 0.4)
    ax_dom.invert_yaxis()
    ax_dom.set_xlabel("time (s)")
    ax_dom.set_title(f"dominant emotion over time ({acc.bin_s:g} s bins)")
    ax_dom.set_xlim(0, end)
    ax_dom.legend(handles=_emotion_handles(), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  frameon=False, title="emotion", title_fontsize=8)

    for row, f in enumerate(faces):
        left = 0.0
        for c in CLASSES:
            share = f.shares[c]
            if share > 0:
                ax_share.barh(row, share, left=left, color=colors[c], height=0.8)
            left += share
    ax_share.set_yticks(range(len(faces)), labels)
    ax_share.set_ylim(-0.6, n - 0.4)
    ax_share.invert_yaxis()
    ax_share.set_xlim(0, 1)
    ax_share.set_xlabel("share of frames")
    ax_share.set_title("share of time per emotion (colours as above)")
    return fig


def _image_figure(summary: Summary, faces: list[FaceSummary], Figure):
    """Image folders: one row per image's face with its class probabilities and its valence."""
    from rtfer.colors import color_rgb01

    n = max(len(faces), 1)
    fig = Figure(figsize=(11, 1.4 + 0.38 * n), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for row, f in enumerate(faces):
        left = 0.0
        probs = f.mean_probs or f.shares
        for c in CLASSES:
            ax.barh(row, probs[c], left=left, color=color_rgb01(c), height=0.8)
            left += probs[c]
        ax.text(1.02, row, f"{f.dominant} {probs[f.dominant]:.0%}, valence {f.mean_valence:+.2f}", va="center",
                fontsize=8, color="0.15", transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(faces)), [f.label(True) for f in faces], fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("class probability")
    ax.set_title(f"one row per image's face ({len(summary.faces)} faces)")
    fig.legend(handles=_emotion_handles(), loc="outside lower center", ncol=len(CLASSES), fontsize=8, frameon=False)
    return fig
