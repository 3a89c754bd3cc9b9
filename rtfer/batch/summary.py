"""The totals of a batch run (:class:`BatchSummary`): counts per status, frames, faces, throughput, the exit code
and the table the CLI prints."""
from __future__ import annotations

from dataclasses import dataclass, field

from rtfer.batch.common import VideoResult


@dataclass
class BatchSummary:
    """Totals over a batch run (``videos_skipped`` were finished by an earlier run and not redone)."""

    videos_total: int = 0
    videos_ok: int = 0
    videos_partial: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0
    frames: int = 0
    faces: int = 0
    wall_seconds: float = 0.0
    workers: int = 1
    executor: str = "in-process"
    manifest: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    index: str = ""  # the report index page, when reports were asked

    def add(self, result: VideoResult) -> None:
        if result.status == "failed":
            self.videos_failed += 1
            self.failures.append((result.input, result.error))
            return
        if result.status == "partial":
            self.videos_partial += 1
        else:
            self.videos_ok += 1
        self.frames += result.frames
        self.faces += result.faces

    @property
    def failed(self) -> int:
        """Videos that failed in this run (what the exit status reports)."""
        return self.videos_failed

    @property
    def videos_done(self) -> int:
        """Videos analysed in this run (ok or partial)."""
        return self.videos_ok + self.videos_partial

    @property
    def videos_per_hour(self) -> float:
        return self.videos_done * 3600.0 / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every video was analysed (or skipped as finished), 1 when any failed."""
        return 1 if self.videos_failed else 0

    def status_line(self) -> str:
        if not self.videos_failed:
            return f"all {self.videos_total} videos done ({self.videos_skipped} skipped as already finished)"
        return (f"{self.videos_failed} of {self.videos_total} videos failed; their errors are in {self.manifest} "
                "(rerun the same command to retry them)")

    def table(self) -> str:
        rows = [("executor", f"{self.executor}, {self.workers} in parallel"),
                ("videos", str(self.videos_total)),
                ("  ok", str(self.videos_ok)),
                ("  partial", str(self.videos_partial)),
                ("  failed", str(self.videos_failed)),
                ("  skipped", str(self.videos_skipped)),
                ("frames", str(self.frames)),
                ("faces", str(self.faces)),
                ("wall time", f"{self.wall_seconds:.1f} s"),
                ("videos/hour", f"{self.videos_per_hour:.0f}"),
                ("frames/s", f"{self.frames_per_s:.1f}"),
                ("manifest", self.manifest)]
        if self.index:
            rows.append(("reports", self.index))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        for inp, err in self.failures[:10]:
            lines.append(f"failed: {inp}: {err}")
        if len(self.failures) > 10:
            lines.append(f"... and {len(self.failures) - 10} more failures in the manifest")
        return "\n".join(lines)
