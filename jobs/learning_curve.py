"""Learning curve of a training run: loss from its metrics.jsonl, evaluation metrics at its kept checkpoints.

    python jobs/learning_curve.py --config larimar-smol-v2 --experiments counterfact,zsre \
        --out runs/curves/larimar-smol-v2

The loss comes from <run.storage_path>/<run.name>/metrics.jsonl, which every run writes
(larimar.train.run_record); --logs reads training log text instead, for runs made before it existed.

--config is the run's training config (recipe name or YAML, with the run's key=value overrides
after it); the checkpoints are those in <run.storage_path>/<run.name> (keep more with
run.keep_checkpoints). Each experiment runs on its standard development file (--limit N for its
first N cases); a rerun reuses the evaluations it finds in --out. Writes curve.md, curve.png, loss.csv and checkpoints.csv. Logic:
larimar/evaluation/curves.py and larimar/train/checkpoints.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from larimar.train.checkpoints import list_checkpoints, load_checkpoint_model
from larimar.config import ConfigError
from larimar.sources import resolve_source
from larimar.train.distributed import resolve_paths, run_dir
from larimar.evaluation import EvalConfig, run
from larimar.evaluation.context import EvalContext
from larimar.evaluation.curves import METRICS, LearningCurve, merge_logs, pick
from larimar.evaluation.report import fmt
from larimar.train.run_record import losses, read_metrics
from larimar.train.config import load_train_config

DATA = {
    "counterfact": "../shared/data/counterfact/dev_canonical_100.json",
    "zsre": "../shared/data/zsre/dev_eval_300.json",
}


def earlier_summary(path: Path, cfg: EvalConfig) -> dict | None:
    """A rerun reuses a finished evaluation of the same checkpoint, data and limit."""
    if not path.exists():
        return None
    done = json.loads(path.read_text())
    before = done.get("config", {})
    same = (before.get("model"), before.get("data"), before.get("limit")) == (cfg.model, cfg.data, cfg.limit)
    return done["summary"] if same else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the run's training config (recipe name or YAML)")
    p.add_argument("overrides", nargs="*", help="the run's key=value overrides")
    p.add_argument(
        "--logs",
        nargs="*",
        default=None,
        help="runs older than metrics.jsonl: their training logs, oldest first (instead of metrics.jsonl)",
    )
    p.add_argument("--experiments", default="counterfact,zsre", help=f"comma-separated, of {sorted(DATA)}; '' for none")
    p.add_argument("--limit", type=int, help="first N cases of each experiment's file")
    p.add_argument("--steps", default="", help="comma-separated checkpoint steps to evaluate (default: every kept one)")
    p.add_argument("--window", type=int, default=100, help="steps per loss mean")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        cfg = resolve_paths(load_train_config(a.config, a.overrides))
        experiments = [e for e in a.experiments.split(",") if e]
        unknown = [e for e in experiments if e not in DATA]
        if unknown:
            raise ConfigError(f"--experiments: unknown {unknown}; choose from {sorted(DATA)}")
        if a.logs is not None:
            missing = [log for log in a.logs if not Path(log).is_file()]
            if missing:
                raise ConfigError(f"--logs: no such file {missing[0]}")
            points = merge_logs([Path(log).read_text() for log in a.logs])
        else:
            try:
                points = losses(read_metrics(run_dir(cfg)))
            except FileNotFoundError as err:
                raise ConfigError(str(err)) from None
        curve = LearningCurve(Path(run_dir(cfg)).name, points, window=a.window)
        checkpoints = list_checkpoints(run_dir(cfg)) if experiments else []
        if experiments and not checkpoints:
            raise ConfigError(f"no checkpoints in {run_dir(cfg)} (the config's run.storage_path / run.name)")
        if a.steps:
            try:
                wanted = {int(x) for x in a.steps.split(",") if x.strip()}
            except ValueError:
                raise ConfigError(f"--steps: expected comma-separated integers, got {a.steps!r}") from None
            absent = sorted(wanted - {step for step, _ in checkpoints})
            if absent:
                raise ConfigError(f"--steps: no checkpoint at step {absent} (kept: {[s for s, _ in checkpoints]})")
            checkpoints = [(step, path) for step, path in checkpoints if step in wanted]
        for step, path in checkpoints:
            model = None
            row: dict = {"step": step}
            for name in experiments:
                ecfg = EvalConfig(
                    experiment=name,
                    model=str(path),
                    data=str(resolve_source(DATA[name])),
                    limit=a.limit,
                    out=f"{a.out}/step_{step}",
                    progress=False,
                )
                summary = earlier_summary(Path(ecfg.out) / f"{name}.json", ecfg)
                if summary is None:
                    model = model or load_checkpoint_model(cfg.model, path)
                    summary = run(ecfg, EvalContext(ecfg, model=model))[0].summary
                row.update({label: pick(summary, key) for key, label in METRICS[name]})
            print(f"step {step}: " + " ".join(f"{k}={fmt(v)}" for k, v in row.items() if k != "step"), flush=True)
            curve.checkpoints.append(row)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = curve.write(a.out)
    print(curve.markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
