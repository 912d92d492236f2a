"""Hyperparameter sweeps with Ray Tune: every trial is a Larimar training run on Ray Train.

Ray 2.60 runs Train V2, where ``Tuner(trainer)`` is gone: a Tune *function* trainable
(`run_trial`) builds a `TorchTrainer` with `larimar.train.distributed.make_trainer` and fits it, and
Train's `TuneReportCallback` forwards rank 0's ``ray.train.report`` metrics to Tune. With
``validation.enabled`` those reports carry held-out metrics (`larimar.train.validation`), so ASHA
stops trials on reconstruction through memory or CounterFact edit success, not training loss.

A sweep YAML (`SweepConfig`, e.g. ``larimar/recipes/sweep-tiny.yaml``) names a base training config plus
overrides and a search space over its keys; the paper's knobs have short names (`ALIASES`: K,
sigma_xi, sigma_w, learn_sigma_w, beta and its schedule, episode_size, lr). Each trial's
training run lives in ``<experiment>/train/trial-<id>`` (stable, so a restored trial resumes
from its checkpoint); rerunning a sweep with the same experiment name restores it with
``Tuner.restore`` and finishes the unfinished and errored trials.

Outputs, in ``<storage_path>/<name>/report``: ``best.json`` (the best trial's parameters, the
``key=value`` overrides that reproduce it with ``jobs/train.py``, its checkpoint and exported
model), ``trials.csv`` and ``trials.md`` (every trial, whether it finished, was stopped early
by ASHA or errored) and PNG plots of the objective against each swept parameter, plus recall
against N for each K when ``validation.capacity_sizes`` is set.

ASHA-stopped trials kill the trial actor while its Train controller still holds a placement
group; Ray removes it only when the dashboard (its State API) runs, so a locally started Ray has
``include_dashboard=True``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from larimar import recipes
from larimar.config import ConfigError, from_dict, load, set_dotted, to_dict
from larimar.train.config import TrainConfig, load_train_config

log = logging.getLogger(__name__)

ALIASES = {
    "K": "model.memory.slots",
    "sigma_xi": "model.memory.observation_noise_std",
    "sigma_w": "model.memory.read_noise_std",
    "learn_sigma_w": "model.memory.learn_read_noise",
    "beta": "model.loss.kl",
    "beta_cycles": "model.loss.beta_cycles",
    "beta_zero_fraction": "model.loss.beta_zero_fraction",
    "beta_ramp_fraction": "model.loss.beta_ramp_fraction",
    "episode_size": "data.episode_size",
    "lr": "optim.lr",
}
# Prepared once in the driver (chunks, held-out text, resources, run paths): not per-trial knobs.
FIXED_PREFIXES = ("run.", "scaling.", "validation.", "debug.", "data.", "model.decoder", "model.max_length")
FIXED_EXCEPTIONS = ("data.episode_size",)
KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
REPORT_DIR = "report"
TRAIN_DIR = "train"


# -- config ----------------------------------------------------------------------------------


@dataclass
class ExperimentSection:
    name: str = "larimar-sweep"  # stable: rerunning with the same name resumes the sweep
    storage_path: str = "runs/tune"  # local directory (relative to the working directory)
    max_failures: int = 0  # Tune restarts of a failed trial (each run also has run.max_failures)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"experiment.name must be a non-empty name without '/', got {self.name!r}")
        if "://" in self.storage_path:
            raise ValueError("experiment.storage_path: sweeps write their report locally; use a directory")


@dataclass
class SearchSection:
    algorithm: Literal["grid", "random", "optuna", "hyperopt"] = "grid"
    num_samples: int = 1  # grid/random: repeats of the grid (ranges sampled anew); optuna/hyperopt: trials
    seed: int | None = 0
    space: dict[str, Any] = field(default_factory=dict)  # name -> {grid|choice|uniform|loguniform|randint: ...} or a value

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"search.num_samples must be >= 1, got {self.num_samples}")


@dataclass
class SchedulerSection:
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1  # optimizer steps every trial runs before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the top 1/reduction_factor at each rung
    max_t: int | None = None  # steps at the last rung; None: the base config's optim.steps

    def __post_init__(self) -> None:
        if self.grace_period < 1:
            raise ValueError(f"scheduler.grace_period must be >= 1 step, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ValueError(f"scheduler.reduction_factor must be > 1, got {self.reduction_factor}")


@dataclass
class ResourcesSection:
    max_concurrent_trials: int | None = None  # None: as many trials as the cluster's CPUs/GPUs hold
    trial_driver_cpus: float = 0.0  # CPUs reserved for each trial's driver (it only waits on fit())

    def __post_init__(self) -> None:
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(f"resources.max_concurrent_trials must be >= 1 or null, got {self.max_concurrent_trials}")
        if self.trial_driver_cpus < 0:
            raise ValueError(f"resources.trial_driver_cpus must be >= 0, got {self.trial_driver_cpus}")


@dataclass
class PlotSpec:
    x: str  # a swept parameter (its name in search.space)
    group: str | None = None  # one line per value of this parameter
    metric: str | None = None  # default: the sweep's metric


@dataclass
class SweepConfig:
    train: str = "tiny"  # the base training config: a recipe name or a YAML file, as for `larimar train`
    overrides: list[str] = field(default_factory=list)  # key=value applied to it for every trial
    metric: str = "val/rec_token_acc"  # a reported metric: val/*, loss, loss/<term>
    mode: Literal["min", "max"] = "max"
    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    search: SearchSection = field(default_factory=SearchSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    plots: list[PlotSpec] = field(default_factory=list)  # default: the metric against each swept parameter


def load_sweep_config(path: str | Path | None, overrides: list[str] | None = None) -> SweepConfig:
    """A sweep YAML or a bundled sweep's name (``sweep-tiny``), plus ``key=value`` overrides."""
    return load(SweepConfig, recipes.resolve(path) if path is not None else None, overrides)


@dataclass(frozen=True)
class Param:
    """One entry of search.space: `name` as written, `key` the dotted TrainConfig key."""

    name: str
    key: str
    kind: str  # one of KINDS, or "value" (fixed for every trial)
    args: Any

    @property
    def swept(self) -> bool:
        return self.kind != "value" and not (self.kind in ("grid", "choice") and len(self.args) == 1)

    def samples(self) -> list:
        """Values that stand for the domain when checking it against TrainConfig."""
        if self.kind in ("grid", "choice"):
            return list(self.args)
        if self.kind == "value":
            return [self.args]
        return list(self.args)  # range endpoints

    def domain(self, algorithm: str):
        from ray import tune

        if self.kind == "value":
            return self.args
        if self.kind == "grid" and algorithm == "grid":
            return tune.grid_search(list(self.args))
        if self.kind in ("grid", "choice"):
            return tune.choice(list(self.args))
        lo, hi = self.args
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](lo, hi)


def parse_space(search: SearchSection, base: TrainConfig) -> list[Param]:
    """search.space -> Params, each value checked against TrainConfig (errors name the entry)."""
    params = []
    base_dict = to_dict(base)
    for name, spec in _flatten(search.space).items():
        where = f"search.space.{name}"
        key = ALIASES.get(name, name)
        if key.startswith(FIXED_PREFIXES) and key not in FIXED_EXCEPTIONS:
            raise ConfigError(f"{where}: {key} is fixed for the whole sweep (data, resources and run paths are "
                              f"prepared once); set it in overrides instead")
        if isinstance(spec, dict):
            kinds = [k for k in spec if k in KINDS]
            if len(spec) != 1 or len(kinds) != 1:
                raise ConfigError(f"{where}: expected exactly one of {list(KINDS)}, got {sorted(spec)}")
            kind, args = kinds[0], spec[kinds[0]]
            if kind in ("grid", "choice"):
                if not isinstance(args, list) or not args:
                    raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
            else:
                if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                                          for a in args) and args[0] < args[1]):
                    raise ConfigError(f"{where}.{kind}: expected [low, high] numbers with low < high, got {args!r}")
                if kind == "loguniform" and args[0] <= 0:
                    raise ConfigError(f"{where}.loguniform: the low end must be > 0, got {args[0]}")
                if kind == "randint" and not all(isinstance(a, int) for a in args):
                    raise ConfigError(f"{where}.randint: expected integers [low, high), got {args!r}")
                args = tuple(args)
            param = Param(name, key, kind, tuple(args) if kind in ("grid", "choice") else args)
        else:
            param = Param(name, key, "value", spec)
        for value in param.samples():
            trial_config(base_dict, {name: value}, where=where)
        if search.algorithm in ("optuna", "hyperopt") and param.kind == "grid" and param.swept:
            log.info(f"{where}: {search.algorithm} samples grid values as a categorical choice")
        params.append(param)
    if not params:
        raise ConfigError("search.space: empty; name at least one parameter, e.g. K: {grid: [128, 256]}")
    return params


def _flatten(space: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections (``{model: {loss: {kl: {grid: ...}}}}``, or a ``search.space.a.b=...``
    override) -> dotted names; a mapping that names a domain kind is a leaf."""
    out = {}
    for name, spec in space.items():
        if isinstance(spec, dict) and spec and not any(k in KINDS for k in spec):
            out.update(_flatten(spec, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = spec
    return out


def trial_config(base: dict, values: dict[str, Any], where: str = "search.space") -> TrainConfig:
    """The base training config (as a dict) with a trial's parameter values set."""
    data = copy.deepcopy(base)
    for name, value in values.items():
        set_dotted(data, ALIASES.get(name, name), value)
    try:
        return from_dict(TrainConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_metric(cfg: SweepConfig, base: TrainConfig) -> None:
    """The objective must be something every report carries, or ASHA has nothing to compare."""
    from larimar.train.validation import metric_names

    known = ["loss"] + [f"loss/{t}" for t in ("reconstruction", "autoencoder", "lm", "kl", "latent_l2")]
    if base.validation.enabled:
        known += metric_names(base)
    if cfg.metric not in known:
        hint = "" if base.validation.enabled or not cfg.metric.startswith("val/") else \
            " (val/* metrics need validation.enabled=true in overrides)"
        raise ConfigError(f"metric: {cfg.metric!r} is not reported by these trials{hint}; choose one of {known}")


# -- the trial ---------------------------------------------------------------------------------


def run_trial(config: dict, base: dict, chunks, validation_texts: list[str] | None, train_root: str) -> None:
    """One Tune trial: build the trial's TrainConfig and fit its TorchTrainer (Train V2 in Tune)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from larimar.train.data import to_ray_dataset
    from larimar.train.distributed import make_trainer

    cfg = trial_config(base, config)
    cfg.run.name = f"trial-{ray.tune.get_context().get_trial_id()}"  # stable across restores: resumes
    cfg.run.storage_path = train_root
    make_trainer(cfg, to_ray_dataset(chunks), callbacks=[TuneReportCallback()], validation_texts=validation_texts).fit()


# -- the driver --------------------------------------------------------------------------------


def concurrent_trials(cfg: SweepConfig, base: TrainConfig, resources: dict[str, float]) -> int:
    """How many trials the cluster holds at once: its CPUs (and GPUs) over one trial's needs,
    capped by resources.max_concurrent_trials."""
    s = base.scaling
    cpu = s.num_workers * s.cpus_per_worker + cfg.resources.trial_driver_cpus
    fits = int(resources.get("CPU", 0) // cpu) if cpu > 0 else 10**6
    if s.use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // s.num_workers))
    if fits < 1:
        log.warning(f"one trial needs {cpu} CPUs{f' and {s.num_workers} GPUs' if s.use_gpu else ''} but the cluster "
                    f"has {resources}; running one at a time and waiting for resources (an autoscaler may add them)")
        fits = 1
    cap = cfg.resources.max_concurrent_trials
    return min(fits, cap) if cap else fits


def _search_alg(cfg: SweepConfig, concurrency: int):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    algo, seed = cfg.search.algorithm, cfg.search.seed
    if algo in ("grid", "random"):
        return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)
    try:
        if algo == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(seed=seed)
        else:
            from ray.tune.search.hyperopt import HyperOptSearch

            searcher = HyperOptSearch(random_state_seed=seed)
    except (ImportError, AssertionError) as err:
        raise ConfigError(f"search.algorithm: {algo} needs its package (pip install {algo}): {err}") from None
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def _scheduler(cfg: SweepConfig, base: TrainConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler.type == "fifo":
        return FIFOScheduler()
    max_t = cfg.scheduler.max_t or base.optim.steps
    if cfg.scheduler.grace_period > max_t:
        raise ConfigError(f"scheduler.grace_period: {cfg.scheduler.grace_period} steps exceeds max_t={max_t}")
    # time_attr "step": the optimizer step each report carries, so rungs are in steps whatever log_every is
    return ASHAScheduler(time_attr="step", max_t=max_t, grace_period=cfg.scheduler.grace_period,
                         reduction_factor=cfg.scheduler.reduction_factor)


def start_local_ray(num_cpus: int | None = None) -> None:
    """A local Ray with the dashboard, whose State API is how Ray Train's PlacementGroupCleaner
    finds ASHA-stopped trials' dead controllers. The cleaner runs in the cluster and looks the API
    up by address; with several Ray clusters on one machine (other users, CI jobs) auto-detection
    fails ("Found multiple active Ray instances") and the leaked placement group starves the next
    trial. So the dashboard gets a port chosen here and every worker of this job is told its URL."""
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_port=port,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})


def _init_ray() -> bool:
    """Join RAY_ADDRESS's cluster (inside ``ray job submit``) or an initialised Ray; else start a
    local one with the dashboard (`start_local_ray`). True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        start_local_ray()
    return True


@dataclass
class SweepSummary:
    experiment_path: str
    report_dir: str
    best: dict | None
    rows: list[dict]
    concurrency: int
    restored: bool
    seconds: float


def run_sweep(cfg: SweepConfig, resume: bool = True) -> SweepSummary:
    """Validate everything, run (or restore and finish) the Tune experiment, write the report."""
    import ray
    from ray import tune

    from larimar.train.data import prepare_chunks
    from larimar.train.distributed import resolve_paths

    base = resolve_paths(load_train_config(_resolve(cfg.train), cfg.overrides))
    params = parse_space(cfg.search, base)
    check_metric(cfg, base)
    scheduler = _scheduler(cfg, base)
    chunks = prepare_chunks(base)
    validation_texts = None
    if base.validation.enabled:
        from larimar.train.validation import prepare_validation_texts

        validation_texts = prepare_validation_texts(base)
    experiment_path = Path(cfg.experiment.storage_path).expanduser().resolve() / cfg.experiment.name
    train_root = str(experiment_path / TRAIN_DIR)

    started = _init_ray()
    t0 = time.perf_counter()
    try:
        concurrency = concurrent_trials(cfg, base, ray.cluster_resources())
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base=to_dict(base), chunks=chunks, validation_texts=validation_texts,
                                 train_root=train_root),
            # A request may not be empty: with no driver CPUs, one byte of memory stands in.
            {"cpu": cfg.resources.trial_driver_cpus, **({} if cfg.resources.trial_driver_cpus else {"memory": 1})})
        restored = resume and tune.Tuner.can_restore(str(experiment_path))
        if restored:
            log.info(f"restoring {experiment_path}: finishing its unfinished and errored trials")
            tuner = tune.Tuner.restore(str(experiment_path), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={p.name: p.domain(cfg.search.algorithm) for p in params},
                tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, num_samples=cfg.search.num_samples,
                                            search_alg=_search_alg(cfg, concurrency), scheduler=scheduler,
                                            max_concurrent_trials=concurrency),
                run_config=tune.RunConfig(name=cfg.experiment.name, storage_path=str(experiment_path.parent),
                                          failure_config=tune.FailureConfig(max_failures=cfg.experiment.max_failures),
                                          verbose=1))
        grid = tuner.fit()
        rows = trial_rows(grid, params, base, cfg.metric, train_root)
    finally:
        if started:
            ray.shutdown()
    report_dir = experiment_path / REPORT_DIR
    best = write_report(report_dir, rows, params, cfg, base)
    return SweepSummary(str(experiment_path), str(report_dir), best, rows, concurrency, restored,
                        time.perf_counter() - t0)


def _resolve(path: str) -> Path:
    """The base training YAML: a file, or a bundled recipe's name (`larimar.recipes`)."""
    return recipes.resolve(path, key="train")


# -- the report ----------------------------------------------------------------------------------


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
        row = {"trial_id": trial_id, "status": status, **values, "step": step, "steps": steps,
               metric: m.get(metric), "loss": m.get("loss"),
               **{k: v for k, v in sorted(m.items()) if k.startswith("val/") and k != metric},
               "checkpoint": _latest_checkpoint(result),
               "model": str(model) if (model / "config.json").exists() else None,
               "error": str(result.error).splitlines()[0][:200] if result.error is not None else None}
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


def write_report(report_dir: Path, rows: list[dict], params: list[Param], cfg: SweepConfig, base: TrainConfig) -> dict | None:
    from larimar.evaluation.report import markdown_table

    report_dir.mkdir(parents=True, exist_ok=True)
    sign = -1 if cfg.mode == "max" else 1
    rows = sorted(rows, key=lambda r: (not _is_number(r.get(cfg.metric)), sign * r[cfg.metric] if _is_number(r.get(cfg.metric)) else 0))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with (report_dir / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    swept = [p.name for p in params if p.swept]
    shown = ["trial_id", "status", *swept, "step", cfg.metric,
             *[c for c in columns if c.startswith("val/") and c != cfg.metric and "@" not in c], "loss"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped early", "error", "not run")}
    md = [f"# Sweep {cfg.experiment.name}", "",
          f"{len(rows)} trials: {counts['finished']} finished, {counts['stopped early']} stopped early by "
          f"{cfg.scheduler.type.upper()}, {counts['error']} errored, {counts['not run']} not run. Objective: {cfg.metric} ({cfg.mode}), "
          f"last report of each trial; base config {cfg.train} with {' '.join(cfg.overrides) or 'no overrides'}.", "",
          markdown_table(shown, [[_short(r.get(c)) for c in shown] for r in rows])]
    capacity = sorted({c for c in columns if "@" in c}, key=lambda c: (c.split("@")[0], int(c.split("@")[1])))
    if capacity:
        md += ["", "Capacity (one memory of N held-out chunks):", "",
               markdown_table(["trial_id", *swept, *capacity], [[r["trial_id"], *[_short(r.get(c)) for c in swept + capacity]]
                                                                for r in rows])]
    best = best_row(rows, cfg.metric, cfg.mode)
    if best is not None:
        values = {p.name: best[p.name] for p in params}
        best = {"trial_id": best["trial_id"], "status": best["status"], "metric": cfg.metric, "mode": cfg.mode,
                "value": best[cfg.metric], "params": values,
                "overrides": [*cfg.overrides, *(f"{ALIASES.get(k, k)}={json.dumps(v)}" for k, v in values.items())],
                "checkpoint": best["checkpoint"], "model": best["model"], "train_config": cfg.train}
        md += ["", f"Best: trial {best['trial_id']} ({best['status']}), {cfg.metric} = {_short(best['value'])}, "
                   f"{values}; checkpoint {best['checkpoint']}"]
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
            pts = sorted((r[spec.x], r.get(metric), r["status"]) for r in live
                         if (g is None or r[spec.group] == g) and _is_number(r.get(metric)))
            if not pts:
                continue
            xs, ys, st = zip(*pts)
            line, = ax.plot(xs, ys, marker="o", label=f"{spec.group} = {_short(g)}" if spec.group else metric)
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
    out += _capacity_plots(report_dir, live, params, plt)
    return out


def _capacity_plots(report_dir: Path, rows: list[dict], params: list[Param], plt) -> list[str]:
    """recall@N and latent_recall@N against N, one line per K (mean over the other parameters,
    finished trials only when there are any): the shape of paper Fig. 2a."""
    out = []
    k_name = next((p.name for p in params if p.key == ALIASES["K"]), None)
    finished = [r for r in rows if r["status"] == "finished"] or rows
    for family in ("val/latent_recall@", "val/recall@"):
        cols = sorted({c for r in finished for c in r if c.startswith(family)}, key=lambda c: int(c.split("@")[1]))
        if not cols:
            continue
        ns = [int(c.split("@")[1]) for c in cols]
        fig, ax = plt.subplots(figsize=(6, 4))
        keys = sorted({r[k_name] for r in finished}) if k_name else [None]
        for k in keys:
            sel = [r for r in finished if k is None or r[k_name] == k]
            ys = [_mean([r.get(c) for r in sel]) for c in cols]
            line, = ax.plot(ns, ys, marker="o", label=f"K = {k} ({len(sel)} trials)" if k is not None else "all trials")
            if k is not None:
                ax.axvline(k, color=line.get_color(), linestyle=":", alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set(title=f"{family}N: one memory of N held-out chunks", xlabel="N written", ylabel=family.rstrip("@"))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"{_file(family.rstrip('@'))}_vs_N.png"
        fig.savefig(report_dir / name, dpi=120)
        plt.close(fig)
        out.append(name)
    return out


def _mean(values: list) -> float:
    nums = [v for v in values if _is_number(v)]
    return sum(nums) / len(nums) if nums else float("nan")


def _file(name: str) -> str:
    return name.replace("/", "_").replace("@", "_at_")
