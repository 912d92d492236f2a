"""A finished sweep's report: every trial's row (finished, stopped early by ASHA, errored, not run),
``best.json`` with the overrides that reproduce the best trial, ``trials.csv`` / ``trials.md``, and
the plots (the objective against each swept parameter; recall against N for each K), drawn with
the evaluation's `larimar.evaluation.report` curves.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from larimar.config import ConfigError, to_dict
from larimar.train.config import TrainConfig
from larimar.evaluation.report import Curve, plot
from larimar.train.sweep_config import ALIASES, Param, PlotSpec, SweepConfig, trial_config

REPORT_DIR = "report"


def _latest_checkpoint(result) -> str | None:
    df = result.metrics_dataframe
    if df is None or "checkpoint_path" not in df:
        return None
    paths = df["checkpoint_path"].dropna()
    return str(paths.iloc[-1]) if len(paths) else None


def trial_rows(grid, params: list[Param], base: TrainConfig, metric: str, train_root: str) -> list[dict]:
    """One row per trial: its swept parameters, how it ended, its last metrics and checkpoint."""
    rows = []
    base_dict = to_dict(base)
    # Tune's own trial status separates ASHA stops (TERMINATED early) from an interrupted sweep.
    tune_status = {t.trial_id: t.status for t in getattr(getattr(grid, "_experiment_analysis", None), "trials", [])}
    for result in grid:
        m = dict(result.metrics or {})
        trial_id = m.get("trial_id") or Path(result.path).name
        values = {p.name: (result.config or {}).get(p.name) for p in params}  # no config: never started
        steps = trial_config(base_dict, values).optim.steps if result.config else base.optim.steps
        step = m.get("step")
        if result.error is not None:
            status = "error"
        elif step is None:
            status = "not run"  # the sweep was interrupted before its first report; a rerun resumes it
        elif step >= steps:
            status = "finished"
        elif tune_status.get(trial_id, "TERMINATED") != "TERMINATED":
            status = "not run"  # interrupted mid-run (its last report is kept); a rerun resumes it
        else:
            status = "stopped early"  # ASHA (the only thing that ends a healthy trial before its last step)
        model = Path(train_root) / f"trial-{trial_id}" / "model"
        row = {
            "trial_id": trial_id,
            "status": status,
            **values,
            "step": step,
            "steps": steps,
            metric: m.get(metric),
            "loss": m.get("loss"),
            **{k: v for k, v in sorted(m.items()) if k.startswith("val/") and k != metric},
            "checkpoint": _latest_checkpoint(result),
            "model": str(model) if (model / "config.json").exists() else None,
            "error": str(result.error).splitlines()[0][:200] if result.error is not None else None,
        }
        rows.append(row)
    return rows


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The best trial by its last reported metric (finished or ASHA-stopped; errors excluded)."""
    scored = [r for r in rows if r["status"] != "error" and _is_number(r.get(metric))]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[metric])


def write_report(
    report_dir: Path, rows: list[dict], params: list[Param], cfg: SweepConfig, base: TrainConfig
) -> dict | None:
    from larimar.evaluation.report import markdown_table

    report_dir.mkdir(parents=True, exist_ok=True)
    sign = -1 if cfg.mode == "max" else 1
    rows = sorted(
        rows,
        key=lambda r: (not _is_number(r.get(cfg.metric)), sign * r[cfg.metric] if _is_number(r.get(cfg.metric)) else 0),
    )
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with (report_dir / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    swept = [p.name for p in params if p.swept]
    shown = [
        "trial_id",
        "status",
        *swept,
        "step",
        cfg.metric,
        *[c for c in columns if c.startswith("val/") and c != cfg.metric and "@" not in c],
        "loss",
    ]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped early", "error", "not run")}
    md = [
        f"# Sweep {cfg.experiment.name}",
        "",
        f"{len(rows)} trials: {counts['finished']} finished, {counts['stopped early']} stopped early by "
        f"{cfg.scheduler.type.upper()}, {counts['error']} errored, {counts['not run']} not run. Objective: {cfg.metric} ({cfg.mode}), "
        f"last report of each trial; base config {cfg.train} with {' '.join(cfg.overrides) or 'no overrides'}.",
        "",
        markdown_table(shown, [[_short(r.get(c)) for c in shown] for r in rows]),
    ]
    capacity = sorted({c for c in columns if "@" in c}, key=lambda c: (c.split("@")[0], int(c.split("@")[1])))
    if capacity:
        md += [
            "",
            "Capacity (one memory of N held-out chunks):",
            "",
            markdown_table(
                ["trial_id", *swept, *capacity],
                [[r["trial_id"], *[_short(r.get(c)) for c in swept + capacity]] for r in rows],
            ),
        ]
    best = best_row(rows, cfg.metric, cfg.mode)
    if best is not None:
        values = {p.name: best[p.name] for p in params}
        best = {
            "trial_id": best["trial_id"],
            "status": best["status"],
            "metric": cfg.metric,
            "mode": cfg.mode,
            "value": best[cfg.metric],
            "params": values,
            "overrides": [*cfg.overrides, *(f"{ALIASES.get(k, k)}={json.dumps(v)}" for k, v in values.items())],
            "checkpoint": best["checkpoint"],
            "model": best["model"],
            "train_config": cfg.train,
        }
        md += [
            "",
            f"Best: trial {best['trial_id']} ({best['status']}), {cfg.metric} = {_short(best['value'])}, "
            f"{values}; checkpoint {best['checkpoint']}",
        ]
    (report_dir / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    plots = write_plots(report_dir, rows, params, cfg)
    if plots:
        md += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots)]
    (report_dir / "trials.md").write_text("\n".join(md) + "\n")
    return best


def _short(v):
    if isinstance(v, float):
        return float(f"{v:.4g}")
    return v


# -- plots ---------------------------------------------------------------------------------------


def _log_axis(values: list) -> bool:
    nums = [v for v in values if _is_number(v)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 8


def write_plots(report_dir: Path, rows: list[dict], params: list[Param], cfg: SweepConfig) -> list[str]:
    """PNG plots (matplotlib, Agg): the metric against swept parameters, and capacity curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [p.name for p in params if p.swept and all(_is_number(r.get(p.name)) for r in rows)]
    specs = cfg.plots or [PlotSpec(x=name, group=next((o for o in numeric if o != name), None)) for name in numeric]
    names = {p.name for p in params}
    out = []
    live = [r for r in rows if r["status"] != "error"]
    for spec in specs:
        if spec.x not in names or (spec.group and spec.group not in names):
            raise ConfigError(f"plots: {spec.x!r}/{spec.group!r} is not a parameter of search.space ({sorted(names)})")
        metric = spec.metric or cfg.metric
        fig, ax = plt.subplots(figsize=(6, 4))
        groups = sorted({r[spec.group] for r in live}, key=str) if spec.group else [None]
        for g in groups:
            pts = sorted(
                (r[spec.x], r.get(metric), r["status"])
                for r in live
                if (g is None or r[spec.group] == g) and _is_number(r.get(metric))
            )
            if not pts:
                continue
            xs, ys, st = zip(*pts)
            (line,) = ax.plot(xs, ys, marker="o", label=f"{spec.group} = {_short(g)}" if spec.group else metric)
            early = [(x, y) for x, y, s in pts if s != "finished"]
            if early:
                ax.scatter(*zip(*early), facecolors="white", edgecolors=line.get_color(), zorder=3)
        if _log_axis([r[spec.x] for r in live]):
            ax.set_xscale("log", base=2 if all(isinstance(r[spec.x], int) for r in live) else 10)
        ax.set(title=f"{metric} vs {spec.x} (open: stopped early)", xlabel=spec.x, ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"{_file(metric)}_vs_{_file(spec.x)}.png"
        fig.savefig(report_dir / name, dpi=120)
        plt.close(fig)
        out.append(name)
    out += _capacity_plots(report_dir, live, params)
    return out


def _capacity_plots(report_dir: Path, rows: list[dict], params: list[Param]) -> list[str]:
    """recall@N and latent_recall@N against N, one line per K (mean over the other parameters,
    finished trials only when there are any; a dotted line at N = K): the shape of paper Fig. 2a."""
    out = []
    k_name = next((p.name for p in params if p.key == ALIASES["K"]), None)
    finished = [r for r in rows if r["status"] == "finished"] or rows
    for family in ("val/latent_recall@", "val/recall@"):
        cols = sorted({c for r in finished for c in r if c.startswith(family)}, key=lambda c: int(c.split("@")[1]))
        if not cols:
            continue
        ns = [int(c.split("@")[1]) for c in cols]
        series, marks = {}, {}
        for k in sorted({r[k_name] for r in finished}) if k_name else [None]:
            sel = [r for r in finished if k is None or r[k_name] == k]
            label = f"K = {k} ({len(sel)} trials)" if k is not None else "all trials"
            series[label] = (ns, [_mean([r.get(c) for r in sel]) for c in cols])
            if k is not None:
                marks[label] = k
        name = f"{_file(family.rstrip('@'))}_vs_N.png"
        plot(
            Curve(
                f"{family}N: one memory of N held-out chunks",
                "N written",
                family.rstrip("@"),
                series,
                logx=True,
                marks=marks,
            ),
            report_dir / name,
        )
        out.append(name)
    return out


def _mean(values: list) -> float:
    nums = [v for v in values if _is_number(v)]
    return sum(nums) / len(nums) if nums else float("nan")


def _file(name: str) -> str:
    return name.replace("/", "_").replace("@", "_at_")
