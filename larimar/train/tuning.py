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

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from larimar import recipes
from larimar.config import ConfigError, to_dict
from larimar.train.config import TrainConfig, load_train_config
from larimar.train.sweep_config import (
    ALIASES,
    KINDS,
    SweepConfig,
    check_metric,
    load_sweep_config,
    parse_space,
    trial_config,
)
from larimar.train.sweep_report import REPORT_DIR, trial_rows, write_report

log = logging.getLogger(__name__)
TRAIN_DIR = "train"

__all__ = [
    "ALIASES",
    "KINDS",
    "SweepConfig",
    "SweepSummary",
    "check_metric",
    "concurrent_trials",
    "load_sweep_config",
    "parse_space",
    "run_sweep",
    "trial_config",
]


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
        log.warning(
            f"one trial needs {cpu} CPUs{f' and {s.num_workers} GPUs' if s.use_gpu else ''} but the cluster "
            f"has {resources}; running one at a time and waiting for resources (an autoscaler may add them)"
        )
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
    return ASHAScheduler(
        time_attr="step",
        max_t=max_t,
        grace_period=cfg.scheduler.grace_period,
        reduction_factor=cfg.scheduler.reduction_factor,
    )


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
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_port=port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
    )


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
            tune.with_parameters(
                run_trial, base=to_dict(base), chunks=chunks, validation_texts=validation_texts, train_root=train_root
            ),
            # A request may not be empty: with no driver CPUs, one byte of memory stands in.
            {"cpu": cfg.resources.trial_driver_cpus, **({} if cfg.resources.trial_driver_cpus else {"memory": 1})},
        )
        restored = resume and tune.Tuner.can_restore(str(experiment_path))
        if restored:
            log.info(f"restoring {experiment_path}: finishing its unfinished and errored trials")
            tuner = tune.Tuner.restore(
                str(experiment_path), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={p.name: p.domain(cfg.search.algorithm) for p in params},
                tune_config=tune.TuneConfig(
                    metric=cfg.metric,
                    mode=cfg.mode,
                    num_samples=cfg.search.num_samples,
                    search_alg=_search_alg(cfg, concurrency),
                    scheduler=scheduler,
                    max_concurrent_trials=concurrency,
                ),
                run_config=tune.RunConfig(
                    name=cfg.experiment.name,
                    storage_path=str(experiment_path.parent),
                    failure_config=tune.FailureConfig(max_failures=cfg.experiment.max_failures),
                    verbose=1,
                ),
            )
        grid = tuner.fit()
        rows = trial_rows(grid, params, base, cfg.metric, train_root)
    finally:
        if started:
            ray.shutdown()
    report_dir = experiment_path / REPORT_DIR
    best = write_report(report_dir, rows, params, cfg, base)
    return SweepSummary(
        str(experiment_path), str(report_dir), best, rows, concurrency, restored, time.perf_counter() - t0
    )


def _resolve(path: str) -> Path:
    """The base training YAML: a file, or a bundled recipe's name (`larimar.recipes`)."""
    return recipes.resolve(path, key="train")
