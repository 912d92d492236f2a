"""Writing an experiment's results: ``<name>.json``, ``<name>.md`` and, for curves, ``<name>.png``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Curve:
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, tuple[list[float], list[float]]]  # label -> (xs, ys)
    logx: bool = False
    marks: dict[str, float] = field(default_factory=dict)  # label -> x of a dotted line in that series' colour


@dataclass
class Report:
    summary: dict  # the headline numbers
    table: str  # Markdown
    records: list[dict] = field(default_factory=list)  # per case / per point
    curve: Curve | None = None
    notes: list[str] = field(default_factory=list)  # protocol choices a reader needs to know


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def draw(curve: Curve, ax) -> None:
    """One curve of scores in [0, 1] on a matplotlib axis (None points are gaps)."""
    for label, (xs, ys) in curve.series.items():
        (line,) = ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
        if label in curve.marks:
            ax.axvline(curve.marks[label], color=line.get_color(), linestyle=":", alpha=0.6)
    if curve.logx:
        ax.set_xscale("log", base=2)
    ax.set(title=curve.title, xlabel=curve.xlabel, ylabel=curve.ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(curve: Curve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    draw(curve, ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: Report, out: str | Path, name: str, config) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    payload = {
        "experiment": name,
        "config": dataclasses.asdict(config),
        "summary": report.summary,
        "notes": report.notes,
        "records": report.records,
    }
    if report.curve is not None:
        payload["curve"] = dataclasses.asdict(report.curve)
    paths["json"].write_text(json.dumps(payload, indent=2))
    md = [
        f"# {name}",
        "",
        f"model `{config.model}`, data `{config.data}`, limit {config.limit}, seed {config.seed}",
        "",
        report.table,
        "",
    ]
    md += [f"- {n}" for n in report.notes]
    paths["md"].write_text("\n".join(md) + "\n")
    if report.curve is not None:
        paths["png"] = out / f"{name}.png"
        plot(report.curve, paths["png"])
    return paths
