"""Per-run metrics log: one JSON line and one CSV row per epoch, plus a validation-curve PNG redrawn each epoch."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class RunLog:
    """Appends epoch rows to ``metrics.jsonl`` and ``metrics.csv`` in ``folder``; ``plot`` draws ``curves.png``."""

    def __init__(self, folder: str | Path, resume: bool = False) -> None:
        self.folder = Path(folder)
        self.jsonl = self.folder / "metrics.jsonl"
        self.csv = self.folder / "metrics.csv"
        self.rows: list[dict] = []
        if resume and self.jsonl.is_file():
            self.rows = [json.loads(line) for line in self.jsonl.read_text(encoding="utf-8").splitlines() if line]
        else:
            for p in (self.jsonl, self.csv):
                p.unlink(missing_ok=True)

    def truncate(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (a resumed run repeats epochs its checkpoint did not reach)."""
        self.rows = [r for r in self.rows if r["epoch"] <= last_epoch]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        self._rewrite_csv()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with open(self.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)

    def plot(self, path: str | Path | None = None) -> Path | None:
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        path = Path(path or self.folder / "curves.png")
        ep = [r["epoch"] for r in self.rows]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
        a1.plot(ep, [r["train_loss"] for r in self.rows], "o-", label="train loss")
        a1.plot(ep, [r["val_loss"] for r in self.rows], "o-", label="val loss")
        a1.set_xlabel("epoch")
        a1.legend()
        a2.plot(ep, [r["train_accuracy"] for r in self.rows], "o-", label="train acc (augmented)")
        a2.plot(ep, [r["val_accuracy"] for r in self.rows], "o-", label="val acc")
        a2.plot(ep, [r["val_mean_class_accuracy"] for r in self.rows], "o-", label="val mean-class acc")
        a2.set_xlabel("epoch")
        a2.legend()
        a2.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def plot_runs(runs: list[str | Path], path: str | Path, title: str = "") -> Path:
    """Validation accuracy and mean-class accuracy per epoch of several runs on one chart (their metrics.jsonl),
    with each run's cumulative wall time on a second axis, so a reader sees how far each member got and how fast."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from rtfer.errors import InputError

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for run in runs:
        log_path = Path(run) / "metrics.jsonl"
        if not log_path.is_file():
            raise InputError(f"{log_path} does not exist (is {run} a training run folder?)")
        rows = [json.loads(x) for x in log_path.read_text(encoding="utf-8").splitlines() if x]
        ep = [r["epoch"] for r in rows]
        name = Path(run).name
        line, = a1.plot(ep, [100 * r["val_accuracy"] for r in rows], "o-", ms=3, label=f"{name} accuracy")
        a1.plot(ep, [100 * r["val_mean_class_accuracy"] for r in rows], "s--", ms=3, color=line.get_color(),
                alpha=0.6, label=f"{name} mean-class")
        minutes, total = [], 0.0
        for r in rows:
            total += r.get("epoch_seconds", 0.0) / 60
            minutes.append(total)
        a2.plot(minutes, [100 * r["val_accuracy"] for r in rows], "o-", ms=3, color=line.get_color(), label=name)
    a1.set_xlabel("epoch")
    a1.set_ylabel("validation %")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a2.set_xlabel("wall minutes (2-core CPU, members trained side by side)")
    a2.set_ylabel("validation accuracy %")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
