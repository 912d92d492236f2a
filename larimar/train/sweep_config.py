"""What a Ray Tune sweep is (`SweepConfig`, loaded like every config through `larimar.config`) and
how its search space maps onto training-config keys (`ALIASES` for the paper's knobs, `Param`,
`parse_space`, `trial_config`). Run by `larimar.train.tuning`; reported by `larimar.train.sweep_report`.
"""

from __future__ import annotations

import logging

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from larimar import recipes
from larimar.config import ConfigError, from_dict, load, set_dotted, to_dict
from larimar.train.config import TrainConfig

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
    space: dict[str, Any] = field(
        default_factory=dict
    )  # name -> {grid|choice|uniform|loguniform|randint: ...} or a value

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
            raise ConfigError(
                f"{where}: {key} is fixed for the whole sweep (data, resources and run paths are "
                f"prepared once); set it in overrides instead"
            )
        if isinstance(spec, dict):
            kinds = [k for k in spec if k in KINDS]
            if len(spec) != 1 or len(kinds) != 1:
                raise ConfigError(f"{where}: expected exactly one of {list(KINDS)}, got {sorted(spec)}")
            kind, args = kinds[0], spec[kinds[0]]
            if kind in ("grid", "choice"):
                if not isinstance(args, list) or not args:
                    raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
            else:
                if not (
                    isinstance(args, list)
                    and len(args) == 2
                    and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
                    and args[0] < args[1]
                ):
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
        hint = (
            ""
            if base.validation.enabled or not cfg.metric.startswith("val/")
            else " (val/* metrics need validation.enabled=true in overrides)"
        )
        raise ConfigError(f"metric: {cfg.metric!r} is not reported by these trials{hint}; choose one of {known}")


# -- the trial ---------------------------------------------------------------------------------
