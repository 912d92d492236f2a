"""``larimar sweep``: a hyperparameter sweep over Larimar training runs with Ray Tune (logic: larimar.train.tuning).

    larimar sweep --config sweep-tiny [key=value ...] [-t optim.steps=20 ...]
    RAY_AUTH_MODE=disabled ray job submit --working-dir . -- python tune/sweep.py --config sweep-tiny

--config takes a bundled sweep's name (``larimar recipes`` lists them, ``sweep-*``) or a YAML file.

``key=value`` overrides the sweep config (e.g. ``experiment.name=try2 search.num_samples=4``);
``-t key=value`` adds an override of the base training config for every trial. Every trial
trains with Ray Train + DeepSpeed (jobs/train.py's loop) and reports held-out metrics that ASHA
acts on. Rerunning with the same experiment name resumes the sweep (``--fresh`` starts over in
a new directory instead: pick a new ``experiment.name``). The report (best.json, trials.csv,
trials.md, plots) goes to ``<experiment.storage_path>/<experiment.name>/report``.

With RAY_ADDRESS set (as inside ``ray job submit``) it joins that cluster; otherwise it starts a
local Ray with the dashboard on (Ray removes the placement groups of ASHA-stopped trials through
it). Against a ``ray start --head`` cluster, Ray 2.60 needs the same RAY_AUTH_MODE on ``ray start``
and ``ray job submit`` (see jobs/train.py). A bad config exits with status 2 naming the key,
before Ray starts.
"""

from __future__ import annotations

import argparse
import json

from larimar.cli import config_error
from larimar.config import ConfigError


def main(argv: list[str] | None = None, prog: str | None = None):
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a bundled sweep (sweep-tiny, ...) or a sweep YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the sweep config")
    parser.add_argument(
        "-t",
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override of the base training config, for every trial (repeatable)",
    )
    parser.add_argument("--fresh", action="store_true", help="do not restore an existing experiment of this name")
    args = parser.parse_args(argv)
    from larimar.train.sweep_config import load_sweep_config
    from larimar.train.tuning import run_sweep

    try:
        cfg = load_sweep_config(args.config, args.overrides)
        cfg.overrides = [*cfg.overrides, *args.train]
        summary = run_sweep(cfg, resume=not args.fresh)
    except ConfigError as err:
        config_error(err)
    counts = {s: sum(r["status"] == s for r in summary.rows) for s in ("finished", "stopped early", "error", "not run")}
    print(
        f"[larimar] sweep {summary.experiment_path} {'(restored) ' if summary.restored else ''}done in "
        f"{summary.seconds:.0f}s: {len(summary.rows)} trials ({counts['finished']} finished, "
        f"{counts['stopped early']} stopped early, {counts['error']} errored, {counts['not run']} not run), "
        f"{summary.concurrency} at a time",
        flush=True,
    )
    print(f"[larimar] best: {json.dumps(summary.best)}", flush=True)
    print(f"[larimar] report: {summary.report_dir}/trials.md, trials.csv, best.json and plots", flush=True)
    if summary.best is None:
        raise SystemExit(1)  # no trial produced the metric
    return summary
