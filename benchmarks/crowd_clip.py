"""A crowded test clip made from the two classroom fixtures: a 2 x 2 mosaic at 1280 x 720 with 26 people.

The tracking targets speak of crowded classrooms (10 and 17 faces) that the fixtures do not have. This builds the
nearest thing from what we have: the 6-face and the 4-face classroom side by side, and below them the same two clips
mirrored (so every face appears twice, in another place, moving the other way). Each tile keeps its pixels (640 x 360),
so the faces are as small in the frame as in a wide shot of a full classroom, and four independent camera pans move
at once. Frames are taken by time from each tile at ``--fps`` for the length of the shorter clip (11.7 s).

People: 8 + 5 in the top row (counted by eye, ``tracker_compare.PERSONS``), the same 13 mirrored below: 26.

    python benchmarks/crowd_clip.py                      # -> ~/.cache/rtfer/crowd/classroom_mosaic_26.mp4
    python benchmarks/tracker_compare.py ~/.cache/rtfer/crowd/classroom_mosaic_26.mp4
    python benchmarks/tracking_stability.py ~/.cache/rtfer/crowd/classroom_mosaic_26.mp4

The clip is made from footage without a stated licence: keep it out of the repository (it is written to a cache).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = ROOT.parent / "shared" / "fixtures" / "videos"
DEFAULT_OUT = Path.home() / ".cache" / "rtfer" / "crowd" / "classroom_mosaic_26.mp4"
TILES = (("unlabeled_george210843_classroom_6faces", False), ("unlabeled_george210843_classroom_4faces", False),
         ("unlabeled_george210843_classroom_4faces", True), ("unlabeled_george210843_classroom_6faces", True))
PERSONS = 26

log = logging.getLogger("crowd_clip")


class _Tile:
    """One tile's clip, read forward as the mosaic's clock advances (one frame held in memory)."""

    def __init__(self, path: Path, mirrored: bool) -> None:
        import cv2

        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (the classroom fixtures: ../shared/fixtures/videos)")
        self.cap = cv2.VideoCapture(str(path))
        self.rate = float(self.cap.get(cv2.CAP_PROP_FPS) or 30.0)
        self.count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.mirrored = mirrored
        self.pos, self.frame = -1, None
        self.at(0.0)
        if self.frame is None:
            raise ValueError(f"{path}: no frames could be read")

    @property
    def seconds(self) -> float:
        return self.count / self.rate

    def at(self, t: float) -> np.ndarray:
        """The frame shown at ``t`` seconds (the last one read, if the clip ends sooner)."""
        target = int(t * self.rate)
        while self.pos < target:
            ok, img = self.cap.read()
            if not ok:
                break
            self.pos, self.frame = self.pos + 1, img
        return self.frame[:, ::-1] if self.mirrored else self.frame

    def close(self) -> None:
        self.cap.release()


def build(videos: Path, out: Path, fps: float = 24.0) -> Path:
    """Write the mosaic clip to ``out`` (an .mp4, via a temporary name then a rename) and return it. The clips are
    streamed: memory holds one frame per tile."""
    import cv2

    tiles: list[_Tile] = []
    try:
        for stem, mirrored in TILES:
            tiles.append(_Tile(videos / f"{stem}.mp4", mirrored))
        h, w = tiles[0].frame.shape[:2]
        n = int(min(t.seconds for t in tiles) * fps)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.part{out.suffix}")
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (2 * w, 2 * h))
        if not writer.isOpened():
            raise OSError(f"cannot write {tmp}")
        try:
            for i in range(n):
                imgs = [t.at(i / fps) for t in tiles]
                imgs = [cv2.resize(img, (w, h)) if img.shape[:2] != (h, w) else img for img in imgs]
                writer.write(np.ascontiguousarray(np.vstack([np.hstack(imgs[:2]), np.hstack(imgs[2:])])))
        finally:
            writer.release()
    finally:
        for t in tiles:
            t.close()
    tmp.replace(out)
    log.warning("wrote %s: %d frames at %.0f fps, %dx%d, %d people", out, n, fps, 2 * w, 2 * h, PERSONS)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="folder with the classroom fixtures")
    ap.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--fps", type=float, default=24.0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if a.fps <= 0:
        print("crowd_clip: error: --fps must be > 0", file=sys.stderr)
        return 2
    try:
        build(a.videos, a.out, a.fps)
    except (OSError, ValueError) as exc:
        print(f"crowd_clip: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
