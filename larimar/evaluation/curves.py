"""Learning curves: training loss from a run's logs and evaluation metrics at its checkpoints.

The issue that asks for a trained model also asks, where a budget cannot reach a target, for the
curves that show it. The loss comes from the `[larimar] step N/T loss=...` lines rank 0 logs every
`run.log_every` steps (a resumed run writes a new log; later logs win for a repeated step); the
metrics come from `jobs/eval.py` experiments run on each kept checkpoint.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from larimar.evaluation.report import Curve, draw, fmt, markdown_table

STEP_LINE = re.compile(r"\[larimar\] step (\d+)/(\d+) loss=([0-9.eE+-]+|nan|inf)")

# (experiment, summary path, column label): the numbers a curve follows per checkpoint
METRICS = {
    "counterfact": [
        (("scope", "ES"), "ES"),
        (("scope", "PS"), "PS"),
        (("scope", "NS"), "NS"),
        (("scope", "Score"), "Score"),
    ],
    "zsre": [(("scope", "ES"), "zsRE edit"), (("scope", "PS"), "zsRE rephrase")],
}


def parse_train_log(text: str) -> dict[int, float]:
    """step -> logged loss of one log."""
    return {int(m[1]): float(m[3]) for m in STEP_LINE.finditer(text)}


def merge_logs(texts: list[str]) -> list[tuple[int, float]]:
    """Losses of several logs of one run (in order: a resumed run's log after its predecessor's)."""
    merged: dict[int, float] = {}
    for text in texts:
        merged.update(parse_train_log(text))
    return sorted(merged.items())


def window_means(points: list[tuple[int, float]], window: int) -> list[tuple[int, int, float]]:
    """(first step, last step, mean loss) over consecutive windows of `window` steps."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    groups: dict[int, list[float]] = {}
    for step, loss in points:
        groups.setdefault((step - 1) // window, []).append(loss)
    return [(g * window + 1, (g + 1) * window, sum(v) / len(v)) for g, v in sorted(groups.items())]


def pick(summary: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(summary, dict) or key not in summary:
            return None
        summary = summary[key]
    return summary


@dataclass
class LearningCurve:
    name: str
    losses: list[tuple[int, float]]
    window: int = 100
    checkpoints: list[dict] = field(default_factory=list)  # {"step": int, label: value, ...}

    def metric_labels(self) -> list[str]:
        seen: list[str] = []
        for row in self.checkpoints:
            seen += [k for k in row if k != "step" and k not in seen]
        return seen

    def markdown(self) -> str:
        parts = [
            f"# Learning curve: {self.name}",
            "",
            f"Training loss, mean per {self.window}-step window ({len(self.losses)} logged steps):",
            "",
            markdown_table(
                ["steps", "mean loss"], [[f"{a}-{b}", m] for a, b, m in window_means(self.losses, self.window)]
            ),
        ]
        if self.checkpoints:
            labels = self.metric_labels()
            parts += [
                "",
                "Evaluation at each checkpoint:",
                "",
                markdown_table(["step", *labels], [[r["step"], *[r.get(k) for k in labels]] for r in self.checkpoints]),
            ]
        return "\n".join(parts) + "\n"

    def write(self, out: str | Path) -> dict[str, Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"md": out / "curve.md", "loss_csv": out / "loss.csv", "png": out / "curve.png"}
        paths["md"].write_text(self.markdown())
        with paths["loss_csv"].open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss"])
            w.writerows(self.losses)
        if self.checkpoints:
            paths["metrics_csv"] = out / "checkpoints.csv"
            labels = self.metric_labels()
            with paths["metrics_csv"].open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", *labels])
                w.writerows([[r["step"], *[fmt(r.get(k), 4) for k in labels]] for r in self.checkpoints])
        self.plot(paths["png"])
        return paths

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 2 if self.checkpoints else 1
        fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
        ax = axes[0][0]
        if self.losses:
            ax.plot(*zip(*self.losses), ".", alpha=0.35, label="logged step")
            means = window_means(self.losses, self.window)
            ax.plot(
                [(a + b) / 2 for a, b, _ in means], [m for _, _, m in means], "-o", label=f"{self.window}-step mean"
            )
            ax.legend()
        ax.set(title=f"{self.name}: training loss", xlabel="step", ylabel="reconstruction loss (nats/token)")
        ax.grid(alpha=0.3)
        if self.checkpoints:
            steps = [r["step"] for r in self.checkpoints]
            draw(
                Curve(
                    "evaluation at checkpoints",
                    "step",
                    "score",
                    {k: (steps, [r.get(k) for r in self.checkpoints]) for k in self.metric_labels()},
                ),
                axes[0][1],
            )
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
