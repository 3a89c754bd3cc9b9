"""The live feed's JSON messages (WebSocket ``/ws`` and Server-Sent Events ``/events``), one text message each.

Every message is an object with a ``type``:

``hello`` (first message on every connection)
    ``{"type": "hello", "schema": 1, "rtfer": "0.1.0", "classes": [7 names], "colors": {class or level: "#RRGGBB"},
    "valence_colors": ["#RRGGBB", ...] (the valence scale from -1 to +1), "run": <the run_start of the run in
    progress, or null>}``
``run_start``
    ``{"type": "run_start", "source": "clip.mp4", "kind": "video" | "camera" | ..., "fps": 25.0 | null,
    "duration_s": 12.0 | null, "bundle": "default 0.5.0", "backend": ..., "device": ..., "detector": ...}``
``frame`` (one per analysed frame)
    ``{"type": "frame", "seq": 17, "source": "clip.mp4", "frame": 42, "time_s": 1.4, "width": 1280, "height": 720,
    "faces": [{"face_id": 3, "box": [x1, y1, x2, y2], "det_score": 0.98, "probs": {"surprise": 0.01, ...,
    "neutral": 0.2}, "emotion": "happiness", "confidence": 0.71, "sentiment5": "very_positive",
    "sentiment3": "positive", "valence": 0.65}], "timings_ms": {"detect": 5.1, ...}}``.
    Values are the CSV timeline's (the same rounding: probabilities 4 decimals, boxes 1, ``time_s`` 3); ``probs``
    are the smoothed probabilities in the canonical class order; a frame without faces has ``"faces": []``.
    ``seq`` counts frames over the whole session (it goes on across runs: a gap means frames this client missed).
``run_end``
    ``{"type": "run_end", "source": "clip.mp4", "status": "ok" | "partial", "frames": 300, "fps": 24.6}``
``skipped``
    ``{"type": "skipped", "count": 12, "total": 40}``: this connection read too slowly and lost ``count`` frame
    messages (the oldest queued ones) since the last such message, ``total`` since it connected.
``bye``
    ``{"type": "bye"}``: the server is stopping (the command has finished); a page should not reconnect.

A client that reads too slowly loses the oldest queued frame messages; one whose send stays blocked for 10 s is
disconnected. Neither slows the analysis nor grows the server's memory.
"""
from __future__ import annotations

import json
from typing import Any

from rtfer.labels import CLASSES
from rtfer.sinks.base import result_records
from rtfer.types import FrameResult

SCHEMA_VERSION = 1
_FACE_FIELDS = ("emotion", "confidence", "sentiment5", "sentiment3", "valence")


def dumps(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def frame_message(result: FrameResult, seq: int) -> dict:
    """The ``frame`` message of one frame (fields as in the CSV timeline; ``skipped`` is filled in per client)."""
    rows = result_records(result)
    faces = []
    if len(result.faces):
        for row in rows:
            face: dict[str, Any] = {"face_id": row["face_id"], "box": [row["x1"], row["y1"], row["x2"], row["y2"]],
                                    "det_score": row["det_score"], "probs": {c: row[c] for c in CLASSES}}
            face.update((k, row[k]) for k in _FACE_FIELDS)
            faces.append(face)
    head = rows[0]
    width = int(result.width or (result.image.shape[1] if result.image is not None else 0))
    height = int(result.height or (result.image.shape[0] if result.image is not None else 0))
    return {"type": "frame", "seq": int(seq), "source": head["source"], "frame": head["frame"],
            "time_s": head["time_s"], "width": width, "height": height, "faces": faces,
            "timings_ms": {k: round(float(v), 2) for k, v in result.timings_ms.items()}}


def hello_message(run: dict | None) -> dict:
    from rtfer import __version__
    from rtfer.colors import EMOTION_COLORS_HEX, LEVEL_COLORS_HEX, VALENCE_STOPS_HEX

    return {"type": "hello", "schema": SCHEMA_VERSION, "rtfer": __version__, "classes": list(CLASSES),
            "colors": {**EMOTION_COLORS_HEX, **LEVEL_COLORS_HEX}, "valence_colors": list(VALENCE_STOPS_HEX),
            "run": run}


def run_start_message(info: dict) -> dict:
    keep = ("source", "kind", "fps", "duration_s", "bundle", "backend", "device", "detector")
    return {"type": "run_start", **{k: _plain(info.get(k)) for k in keep}}


def run_end_message(source: str, status: str, frames: int, fps: float) -> dict:
    return {"type": "run_end", "source": source, "status": status, "frames": int(frames), "fps": round(float(fps), 2)}


def _plain(value: Any) -> Any:
    """A JSON-safe scalar (numbers that are not finite become null)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if number == number and abs(number) != float("inf") else None
