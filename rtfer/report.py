"""A self-contained HTML report per video (``rtfer analyze VIDEO --report OUT.html``) and the batch index page.

The report holds the clip's facts, the run's (bundle, validation accuracy, detector, date, command line), a face
gallery with one row per lasting face (a thumbnail from its clearest frame, its id, time on screen, emotion shares,
mean valence and its timeline), the room's mean valence over time and the top moments (the strongest valence swings).
Everything is inlined: thumbnails as ``data:`` JPEGs, charts as matplotlib SVG, styles in the page; it makes no
network request. Templates are Jinja2 files under ``rtfer/templates``. Memory stays bounded: the timelines come from
:class:`rtfer.sinks.SummaryAccumulator` and each face keeps one small JPEG.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import re
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rtfer.colors import EMOTION_COLORS_HEX, color_rgb01, valence_hex
from rtfer.errors import OutputError
from rtfer.labels import CLASSES
from rtfer.sinks import FaceSummary, Sink, SummaryAccumulator, prepare_output_path, emotion_runs
from rtfer.types import FrameResult

log = logging.getLogger(__name__)

#: A face is shown in the gallery when it was on screen at least this long (videos) — shorter tracks are counted.
MIN_GALLERY_SECONDS = 1.0
MAX_THUMBNAILS = 500
THUMB_PX = 112
#: Top moments: a face's mean valence over SWING_HALF_S seconds against the SWING_HALF_S seconds before, >= MIN_SWING.
SWING_HALF_S = 1.0
MIN_SWING = 0.2


def _jinja_env():
    try:
        import jinja2
    except ImportError:  # pragma: no cover - jinja2 is a core dependency
        raise ImportError("the HTML report needs jinja2 (pip install jinja2)") from None
    env = jinja2.Environment(loader=jinja2.PackageLoader("rtfer", "templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2")),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["valence_colour"] = valence_hex
    env.filters["valence_text"] = lambda v: "#ffffff" if abs(float(v)) > 0.55 else "#111111"  # readable on the chip
    env.filters["duration"] = format_duration
    return env


def format_duration(seconds: float | None) -> str:
    """``75.3`` -> ``1:15.3``; None -> ``?``."""
    if seconds is None:
        return "?"
    m, s = divmod(max(0.0, float(seconds)), 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:04.1f}" if h else f"{m}:{s:04.1f}"


# -- thumbnails ------------------------------------------------------------------------------------------------------
def clarity(crop_gray: np.ndarray, det_score: float, box_side: float, landmarks: np.ndarray | None) -> float:
    """How good a frame of a face is for its thumbnail: sharp (variance of the Laplacian), large, confidently
    detected and frontal (the nose between the eyes)."""
    import cv2

    sharp = float(cv2.Laplacian(crop_gray, cv2.CV_32F).var())
    frontal = 1.0
    if landmarks is not None and np.isfinite(landmarks).all():
        le, re_, nose = landmarks[0], landmarks[1], landmarks[2]
        eye_d = float(np.linalg.norm(re_ - le))
        if eye_d > 1e-3:
            frontal = max(0.0, 1.0 - abs(float(nose[0] - (le[0] + re_[0]) / 2)) / eye_d)
    return float(det_score) * min(1.0, box_side / THUMB_PX) ** 0.5 * (0.4 + 0.6 * frontal) * np.log1p(sharp)


def _square_crop(image: np.ndarray, box: np.ndarray, margin: float = 0.25) -> np.ndarray:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    a, b = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    c, d = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    return image[b:d, a:c]


@dataclass
class _Thumb:
    score: float
    time_s: float
    jpeg: bytes


class ThumbnailKeeper:
    """Keeps, per face, a small JPEG of its clearest frame so far (bounded: one JPEG per face, at most
    ``max_faces`` faces)."""

    def __init__(self, accumulator: SummaryAccumulator, *, size: int = THUMB_PX, max_faces: int = MAX_THUMBNAILS):
        self.acc = accumulator
        self.size = size
        self.max_faces = max_faces
        self.best: dict[int, _Thumb] = {}

    def update(self, result: FrameResult) -> None:
        import cv2

        image = result.image
        faces = result.faces
        if image is None or len(faces) == 0:
            return
        ids = np.asarray(faces.track_ids)
        ids = np.where(ids >= 0, ids, np.arange(len(ids)))
        for i, fid in enumerate(ids.tolist()):
            key = self.acc.key(result.source, fid)
            if key not in self.best and len(self.best) >= self.max_faces:
                continue
            crop = _square_crop(image, faces.xyxy[i])
            if crop.size == 0 or min(crop.shape[:2]) < 8:
                continue
            small = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
            x1, y1, x2, y2 = faces.xyxy[i]
            score = clarity(small, float(faces.scores[i]), float(max(x2 - x1, y2 - y1)), faces.landmarks[i])
            old = self.best.get(key)
            if old is not None and score <= old.score * 1.02:
                continue
            thumb = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 82])
            if ok:
                self.best[key] = _Thumb(score, float(result.time_s), buf.tobytes())

    def data_uri(self, key: int) -> str | None:
        t = self.best.get(key)
        return None if t is None else "data:image/jpeg;base64," + base64.b64encode(t.jpeg).decode("ascii")


# -- charts (matplotlib SVG, inlined) --------------------------------------------------------------------------------
_SVG_STRIP = [
    (re.compile(r"^.*?(?=<svg)", re.S), ""),  # XML declaration, DOCTYPE (it names a URL)
    (re.compile(r"<metadata>.*?</metadata>", re.S), ""),  # RDF metadata with namespace URLs
    (re.compile(r'\s+xmlns(:\w+)?="[^"]*"'), ""),  # namespaces: implied by inline SVG in HTML
]


def svg_markup(fig, salt: str) -> str:
    """A matplotlib figure as an inline ``<svg>`` element (text as text, no URLs, ids unique per ``salt``)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt, "font.size": 9}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    for pattern, repl in _SVG_STRIP:
        text = pattern.sub(repl, text)
    return re.sub(r'<svg\s+width="[^"]*"\s+height="[^"]*"', '<svg class="chart"', text, count=1)


def _room_svg(acc: SummaryAccumulator, end: float) -> str | None:
    from matplotlib.figure import Figure

    t, v, n = acc.room_binned()
    if len(t) < 2:
        return None
    x = t + acc.bin_s / 2
    fig = Figure(figsize=(9.5, 2.9))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.12})
    pos, neg = color_rgb01("very_positive"), color_rgb01("very_negative")
    ax.fill_between(x, 0, v, where=v >= 0, interpolate=True, color=pos, alpha=0.35, lw=0)
    ax.fill_between(x, 0, v, where=v < 0, interpolate=True, color=neg, alpha=0.35, lw=0)
    ax.plot(x, v, color="black", lw=1.4)
    ax.axhline(0, color="0.6", lw=0.8)
    lim = max(0.25, min(1.0, float(np.abs(v).max()) * 1.15))
    ax.set_ylim(-lim, lim)
    ax.set_ylabel("mean valence")
    ax_n.fill_between(x, 0, n, step="mid", color="0.55", lw=0)
    ax_n.set_ylim(0, max(1.0, float(n.max())) * 1.1)
    ax_n.set_ylabel("faces")
    ax_n.set_xlabel("time (s)")
    ax_n.set_xlim(0, end)
    for a in (ax, ax_n):
        a.spines[["top", "right"]].set_visible(False)
    return svg_markup(fig, "room")


def _face_svg(acc: SummaryAccumulator, face: FaceSummary, end: float) -> str | None:
    from matplotlib.figure import Figure

    if face.key not in acc.series:
        return None
    t, p, v = acc.binned(face.key)
    if len(t) == 0:
        return None
    fig = Figure(figsize=(5.6, 1.25))
    ax, ax_b = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    x = t + acc.bin_s / 2
    # break the line where the face was out of view
    gaps = np.flatnonzero(np.diff(t) > acc.bin_s * 1.5)
    for seg in np.split(np.arange(len(t)), gaps + 1):
        ax.plot(x[seg], v[seg], color="black", lw=1.1)
    ax.axhline(0, color="0.65", lw=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_yticks([-1, 0, 1], ["\u22121", "0", "+1"])
    runs = emotion_runs(t, p, acc.bin_s)
    ax_b.broken_barh([(a, b) for a, b, _ in runs], (0, 1), facecolors=[color_rgb01(c) for _, _, c in runs], linewidth=0)
    ax_b.set_yticks([])
    ax_b.set_xlim(0, end)
    ax_b.set_xlabel("time (s)", fontsize=8)
    for a in (ax, ax_b):
        a.tick_params(labelsize=7)
        a.spines[["top", "right"]].set_visible(False)
    return svg_markup(fig, f"face{face.key}")


# -- top moments -----------------------------------------------------------------------------------------------------
@dataclass
class Moment:
    face: FaceSummary
    start_s: float
    end_s: float
    valence_from: float
    valence_to: float
    emotion_from: str
    emotion_to: str

    @property
    def swing(self) -> float:
        return self.valence_to - self.valence_from


def top_moments(acc: SummaryAccumulator, faces: list[FaceSummary], *, window_s: float = 2.0,
                count: int = 8, min_swing: float = 0.2) -> list[Moment]:
    """The strongest valence swings: per face and bin boundary, the face's mean valence over the ``window_s / 2``
    after the boundary minus that over the ``window_s / 2`` before it (an edge detector: it peaks where the change
    happens). The largest ``count`` over all faces, at most one per face within ``window_s``, each at least
    ``min_swing``; windows where the face left the view are skipped."""
    found: list[tuple[float, Moment]] = []
    for f in faces:
        if f.key not in acc.series:
            continue
        t, p, v = acc.binned(f.key)
        h = min(max(1, int(round(window_s / 2 / acc.bin_s))), len(t) // 2)
        if h < 1:
            continue
        cv = np.concatenate([[0.0], np.cumsum(v)])
        cp = np.concatenate([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])
        j = np.arange(h, len(t) - h + 1)
        before, after = (cv[j] - cv[j - h]) / h, (cv[j + h] - cv[j]) / h
        in_view = (t[j + h - 1] - t[j - h]) <= (2 * h - 0.5) * acc.bin_s
        swing = np.where(in_view, after - before, 0.0)
        taken: list[float] = []
        for i in np.argsort(-np.abs(swing), kind="stable"):
            if abs(swing[i]) < min_swing or len(taken) >= count:
                break
            at = float(t[j[i]])
            if any(abs(at - s) < window_s for s in taken):
                continue
            taken.append(at)
            jj = int(j[i])
            m = Moment(f, float(t[jj - h]), float(t[jj + h - 1] + acc.bin_s), float(before[i]), float(after[i]),
                       CLASSES[int((cp[jj] - cp[jj - h]).argmax())], CLASSES[int((cp[jj + h] - cp[jj]).argmax())])
            found.append((abs(float(swing[i])), m))
    found.sort(key=lambda x: -x[0])
    return [m for _, m in found[:count]]


# -- the report ------------------------------------------------------------------------------------------------------
def command_line(argv: list[str] | None = None) -> str:
    """The command that started this run (``rtfer ...``), URL credentials hidden."""
    from rtfer.capture import redact_url

    argv = list(sys.argv if argv is None else argv)
    prog = "rtfer" if argv and Path(argv[0]).name in ("rtfer", "__main__.py", "cli.py") else (argv[0] if argv else "")
    return redact_url(shlex.join([Path(prog).name, *argv[1:]]))


def clip_facts(source) -> dict[str, Any]:
    """Name, kind, duration, frame rate and size of an opened :class:`rtfer.capture.Source`."""
    return {"name": getattr(source, "name", str(source)), "kind": getattr(source, "kind", ""),
            "duration_s": getattr(source, "duration_s", None), "fps": getattr(source, "fps", None),
            "width": getattr(source, "width", None), "height": getattr(source, "height", None)}


def run_facts(pipeline=None, command: str | None = None) -> dict[str, Any]:
    """Bundle (name, version, validation accuracy), backend, detector, date and command line of a run."""
    from rtfer import __version__

    facts: dict[str, Any] = {"rtfer": __version__, "date": datetime.now().astimezone().isoformat(timespec="seconds"),
                             "command": command if command is not None else command_line()}
    if pipeline is not None:
        d = pipeline.describe()
        spec = pipeline.bundle.spec
        metrics = (spec.raw.get("metrics") or {}) if hasattr(spec, "raw") else {}
        ens = metrics.get("ensemble") or {}
        facts.update(bundle=d["bundle"], bundle_name=spec.name, bundle_version=spec.version,
                     backend=d["backend"], device=d["device"], detector=d["detector"],
                     accuracy=ens.get("accuracy"), mean_class_accuracy=ens.get("mean_class_accuracy"),
                     val_count=metrics.get("count"), val_data=(spec.raw.get("training") or {}).get("data")
                     if hasattr(spec, "raw") else None)
    return facts


def report_title(clip: dict, run: dict) -> str:
    return f"{clip.get('name', 'clip')} \u2014 rtfer report"


class ReportSink(Sink):
    """Collects what the report needs while the run goes (bounded memory) and writes the HTML on close.

    Needs each ``FrameResult.image`` for the thumbnails (process_file keeps frames when a report is asked).
    ``clip`` and ``run`` are :func:`clip_facts` and :func:`run_facts` dicts.
    """

    def __init__(self, path: str | os.PathLike, *, clip: dict | None = None, run: dict | None = None,
                 max_faces: int = 24, min_seconds: float = MIN_GALLERY_SECONDS) -> None:
        super().__init__()
        self.path = Path(path)
        self.clip = dict(clip or {})
        self.run = dict(run or {})
        self.max_faces = max_faces
        self.min_seconds = min_seconds
        self.acc = SummaryAccumulator(max_series=max_faces)
        self.thumbs = ThumbnailKeeper(self.acc)
        self.written: Path | None = None

    @classmethod
    def for_run(cls, path, source, pipeline=None, *, command: str | None = None, **kwargs) -> ReportSink:
        return cls(path, clip=clip_facts(source), run=run_facts(pipeline, command), **kwargs)

    def open(self) -> ReportSink:
        if not self._opened:
            self.path = prepare_output_path(self.path, "report", written_at_end=True)
            self._opened = True
        return self

    def append(self, result: FrameResult) -> None:
        self._ensure_open()
        self.acc.update(result)
        self.thumbs.update(result)
        if not self.clip.get("width") and result.width:
            self.clip.update(width=result.width, height=result.height)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._opened:
            self.written = write_report(self.path, self.context())

    def context(self) -> dict[str, Any]:
        """Everything the template shows (plain values and inline SVG strings)."""
        from markupsafe import Markup

        acc = self.acc
        summary = acc.summary()
        ranked = summary.by_screen_time()
        still = summary.per_image or self.clip.get("kind") in ("image", "folder")
        lasting = ranked if still else [f for f in ranked if f.seconds >= self.min_seconds]
        short = len(ranked) - len(lasting)
        duration = self.clip.get("duration_s") or acc.t_end
        end = max(float(duration or 0.0), acc.t_end, 1e-3)
        gallery = []
        for rank, f in enumerate(lasting):
            timeline = _face_svg(acc, f, end) if rank < self.max_faces and not still else None
            thumb = self.thumbs.best.get(f.key)
            gallery.append({
                "id": f.face_id, "label": f.label(summary.per_image), "anchor": f"face-{f.key}",
                "thumb": self.thumbs.data_uri(f.key), "thumb_time": thumb.time_s if thumb else None,
                "seconds": f.seconds, "frames": f.frames, "first_s": f.first_s, "last_s": f.last_s,
                "dominant": f.dominant, "dominant_share": f.dominant_share, "mean_valence": f.mean_valence,
                "shares": [(c, f.shares[c], EMOTION_COLORS_HEX[c]) for c in CLASSES],
                "probs": [(c, (f.mean_probs or f.shares)[c], EMOTION_COLORS_HEX[c]) for c in CLASSES],
                "timeline": Markup(timeline) if timeline else None,
            })
        room = _room_svg(acc, end) if len(ranked) > 1 and not still else None
        moments = [] if still else top_moments(acc, lasting[: self.max_faces], window_s=2 * SWING_HALF_S,
                                               min_swing=MIN_SWING)
        rt, rv, rn = acc.room_binned()
        clip = dict(self.clip)
        clip.setdefault("name", "clip")
        clip["duration_s"] = duration
        clip["frames"] = summary.frames
        clip["frames_without_faces"] = summary.frames_without_faces
        return {
            "title": report_title(clip, self.run), "clip": clip, "run": self.run, "still": still,
            "index_summary": index_summary(summary, duration, len(lasting)),
            "swing_half_s": SWING_HALF_S, "min_swing": MIN_SWING,
            "legend": [(c, EMOTION_COLORS_HEX[c]) for c in CLASSES],
            "faces_total": len(ranked), "gallery": gallery, "short_tracks": short, "min_seconds": self.min_seconds,
            "timelines_shown": min(len(lasting), self.max_faces), "bin_s": acc.bin_s,
            "room_svg": Markup(room) if room else None,
            "room_mean": float(np.average(rv, weights=rn)) if len(rv) else None,
            "mean_faces": float(np.mean(rn)) if len(rn) else 0.0,
            "moments": [{"anchor": f"face-{m.face.key}", "label": m.face.label(summary.per_image),
                         "start": m.start_s, "end": m.end_s, "from": m.valence_from, "to": m.valence_to,
                         "emotion_from": m.emotion_from, "emotion_to": m.emotion_to, "swing": m.swing,
                         "thumb": self.thumbs.data_uri(m.face.key)} for m in moments],
        }


def index_summary(summary, duration_s: float | None, faces_shown: int) -> dict[str, Any]:
    """What the batch index shows for a video (embedded in its report as JSON, read back by :func:`read_index_summary`):
    duration, faces (shown in the gallery, and all tracks), the dominant emotion over all face rows and the mean
    valence over all face rows."""
    rows = sum(f.frames for f in summary.faces)
    counts = {c: sum(f.frames * f.shares[c] for f in summary.faces) for c in CLASSES}
    return {"duration_s": None if duration_s is None else round(float(duration_s), 3), "faces": int(faces_shown),
            "tracks": len(summary.faces), "face_rows": int(rows),
            "dominant": max(counts, key=counts.get) if rows else None,
            "dominant_share": round(max(counts.values()) / rows, 4) if rows else None,
            "mean_valence": round(sum(f.mean_valence * f.frames for f in summary.faces) / rows, 4) if rows else None}


def read_index_summary(report: str | os.PathLike) -> dict[str, Any]:
    """The :func:`index_summary` a report written by rtfer carries ({} when absent or unreadable)."""
    import json

    try:
        with open(report, encoding="utf-8", errors="replace") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return {}
    m = re.search(r'<script type="application/json" id="rtfer-summary">(.*?)</script>', head, re.S)
    if not m:
        return {}
    try:
        d = json.loads(m.group(1))
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def report_href(report: str | os.PathLike, page_dir: str | os.PathLike) -> str:
    """``report`` relative to the folder of the page linking it, every path part percent-encoded (a file called
    ``javascript:alert(1).html``, ``clip#1.html`` or ``a b?c=1.html`` is a link to that file, nothing else)."""
    from urllib.parse import quote

    rel = Path(os.path.relpath(os.path.abspath(report), os.path.abspath(page_dir))).as_posix()
    return "/".join(quote(part, safe="") for part in rel.split("/"))  # ":" too: no part can read as a scheme


def write_report(path: str | os.PathLike, context: dict[str, Any]) -> Path:
    """Render ``report.html.j2`` with ``context`` into ``path``."""
    html = _jinja_env().get_template("report.html.j2").render(**context)
    return _write_text(Path(path), html, "report")


def write_index(path: str | os.PathLike, rows: list[dict[str, Any]], *, title: str = "rtfer batch reports") -> Path:
    """The batch index page: one row per video (``name``, ``href`` relative to the page and percent-encoded
    (:func:`report_href`) or None, ``status``, ``frames``, ``faces``, ``seconds``, ``error`` and ``facts``: the
    report's :func:`index_summary`)."""
    html = _jinja_env().get_template("index.html.j2").render(
        title=title, rows=rows, date=datetime.now().astimezone().isoformat(timespec="seconds"),
        emotion_colours=EMOTION_COLORS_HEX)
    return _write_text(Path(path), html, "report index")


def _write_text(path: Path, text: str, what: str) -> Path:
    path = prepare_output_path(path, what)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    return path
