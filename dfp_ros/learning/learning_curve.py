"""The fine-tuning learning curve: one CSV row per finished episode, and a PNG of the curves.

Columns: wall time, robot, episode index, environment steps so far, learner updates so far, the
episode's return, success, success rate over the last `window` episodes, transitions joined and
dropped in it, the steps a human commanded, the intervention rate (human steps / steps) and the
transitions built from a takeover (`intervened`), and the learner's latest critic loss, Q mean, top-K
Q and distance to the nearest positive. The PNG has four panels: success rate with the intervention
rate (both over the last `window` episodes: HIL-SERL's pair, the one rising as the other falls),
episode return, critic loss, Q values — each against environment steps.
"""

from __future__ import annotations

import csv
from collections import deque
from pathlib import Path
from typing import Any

COLUMNS = ("time_s", "robot", "episode", "env_steps", "updates", "episode_return", "success", "success_rate",
           "steps", "chunks", "joined", "dropped", "critic_loss", "q_mean", "topk_q", "nearest_pos", "learning",
           "human_steps", "intervention_rate", "intervened")


class LearningCurve:
    """Appends rows to `folder/learning_curve.csv` (kept across restarts) and redraws `learning_curve.png`."""

    def __init__(self, folder: Path | str, window: int = 20):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / "learning_curve.csv"
        self.png_path = self.folder / "learning_curve.png"
        self.window = window
        self.rows: list[dict[str, Any]] = []
        if self.csv_path.is_file():
            with self.csv_path.open() as f:
                self.rows = list(csv.DictReader(f))
            if self.rows and set(COLUMNS) - set(self.rows[0]):  # written before columns were added
                self._rewrite()
        self._recent: deque[float] = deque((float(r["success"]) for r in self.rows[-window:]), maxlen=window)
        if not self.csv_path.is_file():
            with self.csv_path.open("w", newline="") as f:
                csv.DictWriter(f, fieldnames=COLUMNS).writeheader()

    def _rewrite(self) -> None:
        """The CSV again with today's columns (the missing ones empty), so appended rows line up."""
        tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in self.rows)
        tmp.replace(self.csv_path)

    @property
    def episodes(self) -> int:
        return len(self.rows)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self._recent.append(float(row.get("success", 0.0)))
        row = {**row, "episode": len(self.rows) + 1, "success_rate": sum(self._recent) / len(self._recent)}
        row = {k: row.get(k, "") for k in COLUMNS}
        self.rows.append(row)
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)
        return row

    def plot(self) -> None:
        if len(self.rows) < 2:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def col(name: str) -> tuple[list[float], list[float]]:
            xs, ys = [], []
            for r in self.rows:
                if r.get(name, "") not in ("", None):
                    xs.append(float(r["env_steps"]))
                    ys.append(float(r[name]))
            return xs, ys

        fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
        panels = [("success_rate", "success rate (last episodes)"), ("episode_return", "episode return"),
                  ("critic_loss", "critic loss"), ("q_mean", "Q (replay chunk)")]
        for ax, (name, title) in zip(axes.flat, panels, strict=True):
            ax.plot(*col(name), lw=1, label="success rate" if name == "success_rate" else None)
            if name == "success_rate":
                xs, ys = col("intervention_rate")
                if any(ys):
                    ax.plot(xs, _rolling_mean(ys, self.window), lw=1, label="intervention rate")
                    ax.legend(fontsize=7)
                    title = "success and intervention rates (last episodes)"
            if name == "q_mean":
                ax.plot(*col("topk_q"), lw=1, label="Q (top-K of EMA policy)")
                ax.legend(fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("environment steps", fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        tmp = self.png_path.with_name(self.png_path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(self.png_path)


def _rolling_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value and up to `window` - 1 before it (as the success rate is computed)."""
    out, recent = [], deque(maxlen=window)
    for v in values:
        recent.append(v)
        out.append(sum(recent) / len(recent))
    return out
