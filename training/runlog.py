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
