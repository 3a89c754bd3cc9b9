"""The summary figure (matplotlib's Agg backend, imported when used): :func:`write_summary_png`, :func:`video_figure`
for a clip, one row per image's face for an image folder, and :func:`emotion_runs`.

The figures read a :class:`rtfer.sinks.summary.SummaryAccumulator` and its :class:`~rtfer.sinks.summary.Summary`;
that module imports this one (its :class:`~rtfer.sinks.summary.SummarySink` writes the PNG), so their names appear
here in annotations only.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rtfer.errors import OutputError
from rtfer.labels import CLASSES
from rtfer.sinks.atomic import MARK, AtomicPath


def write_summary_png(acc: SummaryAccumulator, path: str | os.PathLike, *, title: str | None = None,  # noqa: F821
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
           else video_figure(acc, faces, Figure, duration_s))
    heading = title or ("no faces found" if not ranked else None)
    if hidden:
        note = (f"the first {len(faces)} image faces shown; {hidden} more not shown (all are in the CSV)"
                if summary.per_image else f"{len(faces)} faces with the most screen time shown; {hidden} more not shown")
        heading = f"{heading}\n{note}" if heading else note
    if heading:
        fig.suptitle(heading, fontsize=11)
    out = AtomicPath(path, "summary plot")  # written under a temporary name, renamed when complete
    try:
        fig.savefig(out.begin(), bbox_inches="tight", **_mark(out.final.suffix))
    except OSError as exc:
        out.discard()
        raise OutputError(f"cannot write summary {out.final}: {exc.strerror or exc}") from None
    except BaseException:
        out.discard()
        raise
    return out.commit()


def _mark(suffix: str) -> dict:
    """savefig keywords that put :data:`~rtfer.sinks.atomic.MARK` into the file (an earlier rtfer plot is then
    replaced by a new run; a file of the user's is not)."""
    suffix = suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return {"pil_kwargs": {"comment": MARK.encode()}}
    if suffix == ".png":
        return {"metadata": {"Software": MARK}}
    if suffix in (".pdf", ".svg"):
        return {"metadata": {"Creator": MARK}}
    return {}


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


def video_figure(acc: SummaryAccumulator, faces: list[FaceSummary], Figure,  # noqa: F821
                 duration_s: float | None):
    """A clip's figure: valence over time per face and for the room, the dominant emotion over time and the share of
    frames per emotion, for ``faces`` (the ones to show) over 0 .. ``duration_s`` (else the last frame)."""
    from rtfer.colors import color_rgb01

    n = max(len(faces), 1)
    rows_in = 0.3 * n + 0.9
    fig = Figure(figsize=(11, 3.0 + 2 * rows_in + 0.6), dpi=100, layout="constrained")
    gs = fig.add_gridspec(3, 1, height_ratios=[3.0, rows_in, rows_in])
    ax_val, ax_dom, ax_share = fig.add_subplot(gs[0]), fig.add_subplot(gs[1]), fig.add_subplot(gs[2])
    from rtfer.colors import identity_style

    colors = {c: color_rgb01(c) for c in CLASSES}
    end = max(float(duration_s or 0.0), acc.t_end, 1e-3)
    labels = [f.label() for f in faces]

    plotted = [f for f in faces if f.key in acc.series]
    for f in plotted:
        t, _, v = acc.binned(f.key)
        # identity is a neutral tone, a dash pattern and a marker, never a hue (hues mean emotions and valence)
        tone, dash, marker, _ = identity_style(f.face_id)
        gaps = np.flatnonzero(np.diff(t) > acc.bin_s * 1.5) + 1  # break the line where the face was out of view
        t, v = np.insert(t, gaps, np.nan), np.insert(v, gaps, np.nan)
        ax_val.plot(t + acc.bin_s / 2, v, lw=1.3, color=tone, ls=(0, dash) if dash else "-", marker=marker,
                    markevery=max(1, len(t) // 6), ms=4, label=f.label())
    if len(faces) > 1:
        rt, rv, _ = acc.room_binned()
        ax_val.plot(rt + acc.bin_s / 2, rv, lw=5, color="0.55", alpha=0.35, solid_capstyle="round",
                    label="room mean")
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


def _image_figure(summary: Summary, faces: list[FaceSummary], Figure):  # noqa: F821
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
