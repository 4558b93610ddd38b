"""Training logs: a CSV row per log step, TensorBoard scalars when available, and a PNG of the curves."""

from __future__ import annotations

import csv
from pathlib import Path

# The loss value of DFP stays near the number of temperatures (each force is RMS-normalised), so the
# curves worth watching are the distance to the nearest positive and the raw force magnitudes.
PLOT_KEYS = ("nearest_pos", "loss", "critic_loss", "q_mean")


class TrainingLog:
    def __init__(self, folder: Path, resume: bool = False):
        folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = folder / "log.csv"
        self.png_path = folder / "curves.png"
        self.rows: list[dict[str, float]] = []
        if resume and self.csv_path.is_file():
            with self.csv_path.open() as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(folder / "tensorboard"))
        except ImportError:  # TensorBoard is optional; the CSV and PNG are always written
            pass

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": float(step), **values}
        self.rows.append(row)
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint we resume from."""
        self.rows = [r for r in self.rows if r["step"] <= step]

    def flush(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with self.csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        if self._tb is not None:
            self._tb.flush()
        self.plot()

    def plot(self) -> None:
        if len(self.rows) < 2:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        force_keys = sorted({k for r in self.rows for k in r if k.startswith("force_rms")})
        panels = [k for k in PLOT_KEYS if any(k in r for r in self.rows)]
        panels += ["force_rms"] if force_keys else []
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, key in zip(axes[0], panels, strict=True):
            for k in force_keys if key == "force_rms" else [key]:
                pts = [(r["step"], r[k]) for r in self.rows if k in r]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k.replace("force_rms_", ""))
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if key == "force_rms":
                ax.set_yscale("log")
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.png_path, dpi=90)
        plt.close(fig)

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
