"""Distributed Larimar training: Ray Train workers, each driving a DeepSpeed ZeRO-2 engine.

`train_loop_per_worker` runs on every worker (it lives here, not in ``jobs/train.py``, because
Ray pickles it by reference: a ``__main__`` function drags globals such as ``torch.ops`` into
cloudpickle). `make_trainer` builds the `TorchTrainer` the driver fits. The loop is the same
objective as `larimar.train.loop.train_plain` (paper Eq. 1, cyclic beta, AdamW, linear warmup and
decay, clipping), with DeepSpeed handling data-parallel gradient reduction, ZeRO-2 sharding of
optimizer state and gradients, gradient accumulation, clipping and bf16.

Checkpoints: every ``run.checkpoint_every`` steps each rank calls ``engine.save_checkpoint`` (a
collective that writes its ZeRO shard) into a temporary directory, rank 0 adds ``train_state.json``
(step, data position), and every rank passes its directory to ``ray.train.report``; Ray merges
them into one checkpoint under ``<storage_path>/<run name>/``. On start, ``ray.train.get_checkpoint()``
is set after a worker-group restart (FailureConfig) or when the driver reruns with the same
(storage_path, name); the engine reloads weights, optimizer, LR schedule and step, and the data
stream skips the batches already consumed in the current epoch (see `larimar.train.data.episode_batches`).

At the end rank 0 exports the model with `LarimarModel.save_pretrained` to
``<storage_path>/<run name>/model``: a library-format directory the editor and server load. With
``run.checkpoint_score`` (a reported metric such as ``val/loss``) each checkpoint also carries its
model and the driver exports the best one instead (`export_best`). The run directory also holds
the resolved ``config.yaml`` and ``metrics.jsonl`` (`larimar.train.run_record`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from larimar.train.checkpoints import DS_TAG, STATE_FILE
from larimar.config import ConfigError, from_dict, to_dict
from larimar.train.data import episode_batches
from larimar.losses import beta
from larimar.model import LarimarModel
from larimar.train.run_record import MetricsLog, write_config
from larimar.train.config import TrainConfig
from larimar.train.loop import episode_batch, lr_factor

FAILURE_MARKER = ".larimar_injected_failure"
MODEL_DIR = "model"
PHASES = ("data", "forward", "backward", "optimizer")  # per-step timing, reported as time/<phase>

# Progress goes through logging: Ray Train's patched print() tees to both the captured stdout and
# the root logger, so every printed line shows twice in the job logs.
log = logging.getLogger(__name__)


class InjectedFailure(RuntimeError):
    """Raised once by `debug.fail_at_step` to exercise worker restart and resume."""


# -- storage ---------------------------------------------------------------------------------


def run_dir(cfg: TrainConfig) -> str:
    """``<storage_path>/<run name>``: where Ray keeps the run's checkpoints and we export the model."""
    return f"{cfg.run.storage_path.rstrip('/')}/{cfg.run.name}"


def _filesystem(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)  # (fs, path); local paths and s3://, gs://


def _exists(uri: str) -> bool:
    import pyarrow.fs

    fs, path = _filesystem(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def _touch(uri: str) -> None:
    fs, path = _filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(str(time.time()).encode())


def export_model(model: LarimarModel, uri: str) -> str:
    """save_pretrained to a local directory or, via a temporary directory, to object storage."""
    if "://" not in uri:
        model.save_pretrained(uri)
        return uri
    import pyarrow.fs

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        fs, path = _filesystem(uri)
        pyarrow.fs.copy_files(tmp, path, destination_filesystem=fs)
    return uri


# -- metrics ---------------------------------------------------------------------------------


class TrainMetrics:
    """Prometheus metrics (exported by Ray as ``ray_larimar_train_*``), recorded by rank 0 only:
    the loss terms are already averaged over ranks and tokens/s is the global rate.

    Ray 2.60 exports a gauge only while it is being set: a value not set again within two export
    intervals (2 x 10 s by default) disappears from the scrape. A step of a large model, or the
    time between checkpoints, is longer than that, so gauges go through `_set`, which remembers
    the value, and a daemon thread sets them again every `REFRESH_SECONDS`."""

    REFRESH_SECONDS = 5.0

    def __init__(self, run_name: str):
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = {"run": run_name}
        self.loss = Gauge("larimar_train_loss", "Training loss term (total = the weighted objective)", ("run", "term"))
        self.tokens_per_second = Gauge(
            "larimar_train_tokens_per_second", "Decoder tokens per second, all workers", ("run",)
        )
        self.tokens = Counter("larimar_train_tokens", "Decoder tokens trained on, all workers", ("run",))
        self.step_seconds = Histogram(
            "larimar_train_step_seconds",
            "Wall time of one optimizer step",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
            tag_keys=("run",),
        )
        self.step = Gauge("larimar_train_step", "Last completed optimizer step", ("run",))
        self.checkpoint_time = Gauge(
            "larimar_train_checkpoint_timestamp_seconds", "Unix time of the last checkpoint", ("run",)
        )
        for m in (self.loss, self.tokens_per_second, self.tokens, self.step_seconds, self.step, self.checkpoint_time):
            m.set_default_tags(tags)
        self._values: dict[tuple, tuple] = {}  # (gauge name, tags) -> (gauge, value, tags)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._refresh, name="larimar-train-metrics", daemon=True).start()

    def _set(self, gauge, value: float, tags: dict[str, str] | None = None) -> None:
        with self._lock:
            self._values[(gauge.info["name"], tuple(sorted((tags or {}).items())))] = (gauge, value, tags)
        gauge.set(value, tags)

    def _refresh(self) -> None:
        while not self._stop.wait(self.REFRESH_SECONDS):
            with self._lock:
                values = list(self._values.values())
            for gauge, value, tags in values:
                gauge.set(value, tags)

    def record(self, step: int, terms: dict[str, float], tokens: int, seconds: float) -> None:
        for term, value in terms.items():
            self._set(self.loss, value, {"term": term})
        self._set(self.tokens_per_second, tokens / seconds if seconds > 0 else 0.0)
        self.tokens.inc(tokens)
        self.step_seconds.observe(seconds)
        self._set(self.step, step)

    def checkpointed(self, timestamp: float) -> None:
        """Dashboards show the checkpoint's age: time() - this."""
        self._set(self.checkpoint_time, timestamp)

    def close(self) -> None:
        self._stop.set()


# -- the worker loop -------------------------------------------------------------------------


@dataclass
class DataPosition:
    """Where the data stream is: the epoch and the number of its batches consumed (per worker)."""

    epoch: int = 0
    batches: int = 0


def _disable_deepspeed_jit_builds() -> None:
    """DeepSpeed's comm backend JIT-compiles a shared-memory allreduce op (~1 min on 2 cores, and
    fails without a compiler); gloo does not need it. Set before `deepspeed.initialize`. importlib,
    not ``import deepspeed.ops``: see the module docstring about pickling."""
    importlib.import_module("deepspeed.ops").__compatible_ops__["deepspeed_shm_comm"] = False


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (a collective: every rank calls it with the same length)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def train_loop_per_worker(config: dict) -> None:
    """One DeepSpeed rank. `config` = {"train": to_dict(TrainConfig)}, plain data for pickling."""
    import deepspeed
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = from_dict(TrainConfig, config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")
    if not cfg.scaling.use_gpu:
        torch.set_num_threads(cpu_threads(cfg))  # as OMP_NUM_THREADS: the worker's share of the cores
    _disable_deepspeed_jit_builds()

    torch.manual_seed(cfg.run.seed)  # same init everywhere (DeepSpeed also broadcasts rank 0's weights)
    model = LarimarModel(cfg.model).to(device)
    if cfg.run.init_from and ray.train.get_checkpoint() is None:
        new = model.init_from(cfg.run.init_from)
        if rank == 0:
            log.info(f"[larimar] started from {cfg.run.init_from}; new (at init): {new or 'none'}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.optim.warmup_steps, cfg.optim.steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=cfg.deepspeed_config(),
        dist_init_required=False,
    )
    frozen = any(not p.requires_grad for p in model.parameters())

    start, position = 0, DataPosition()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            # Frozen backbone weights are not in the checkpoint (they reload from the registry).
            engine.load_checkpoint(d, tag=DS_TAG, load_module_strict=not frozen)
            state = json.loads((Path(d) / STATE_FILE).read_text())
        start, position = state["step"], DataPosition(**state["position"])
        if rank == 0:
            log.info(
                f"[larimar] resumed at step {start}/{cfg.optim.steps} (epoch {position.epoch}, "
                f"batch {position.batches})"
            )

    metrics = TrainMetrics(cfg.run.name) if rank == 0 else None
    record = MetricsLog(run_dir(cfg), resume_step=start) if rank == 0 else None  # metrics.jsonl
    validator = None
    if cfg.validation.enabled:  # val/* metrics at every report, the same on every rank (Tune acts on them)
        from larimar.train.validation import Validator

        validator = Validator(cfg, config.get("validation_texts") or [], rank, world)
    shard = ray.train.get_dataset_shard("train")
    stream = episode_batches(shard, cfg.chunks_per_micro_batch, skip=position.batches, start_epoch=position.epoch)
    E, B = cfg.data.episode_size, cfg.optim.micro_batch_episodes
    total, t_run = cfg.optim.steps, time.perf_counter()
    marker = f"{run_dir(cfg)}/{FAILURE_MARKER}"
    engine.train()
    report: dict = {}
    steady_tokens, steady_seconds = 0, 0.0  # this attempt's steps after its first (which warms up)
    phases = dict.fromkeys(PHASES, 0.0)  # seconds per phase over the steady steps (profiling)
    for step in range(start, total):
        t0 = time.perf_counter()
        b = beta(step, total, cfg.model.loss)
        sums: dict[str, float] = {}
        tokens = 0
        times = dict.fromkeys(PHASES, 0.0)
        for _ in range(cfg.optim.grad_accumulation):
            t = time.perf_counter()
            epoch, index, texts = next(stream)
            position = DataPosition(epoch, index + 1)
            batch = episode_batch(engine.module, texts, B, E)
            t1 = time.perf_counter()
            times["data"] += t1 - t
            out = engine(**batch, beta=b)
            t2 = time.perf_counter()
            engine.backward(out.loss)
            t3 = time.perf_counter()
            engine.step()  # an optimizer step only at the accumulation boundary
            t4 = time.perf_counter()
            times["forward"] += t2 - t1
            times["backward"] += t3 - t2
            times["optimizer"] += t4 - t3
            for k, v in {"total": float(out.loss.detach()), **out.terms}.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.optim.grad_accumulation
            tokens += int(batch["dec_attention_mask"].sum())
        keys = sorted(sums)
        terms = dict(zip(keys, [v / _world_size() for v in _sum_over_ranks([sums[k] for k in keys], device)]))
        tokens = int(_sum_over_ranks([tokens], device)[0])
        seconds = time.perf_counter() - t0
        done = step + 1
        if step > start:
            steady_tokens, steady_seconds = steady_tokens + tokens, steady_seconds + seconds
            for k, v in times.items():
                phases[k] += v

        if cfg.debug.fail_at_step == done and rank == 0 and not _exists(marker):
            _touch(marker)  # first attempt only: the restarted worker finds the marker
            raise InjectedFailure(f"debug.fail_at_step={done}: injected failure on rank 0")

        report = {
            "step": done,
            "start_step": start,
            "loss": terms["total"],
            **{f"loss/{k}": v for k, v in terms.items() if k != "total"},
            "beta": b,
            "lr": engine.get_lr()[0],
            "tokens": tokens,
            "tokens_per_second": tokens / seconds,
            "step_seconds": seconds,
            "epoch": position.epoch,
            "steady_tokens_per_second": steady_tokens / steady_seconds if steady_seconds else tokens / seconds,
            "steady_seconds": steady_seconds,
            "threads": torch.get_num_threads(),
            **{f"time/{k}": v for k, v in phases.items()},
        }
        if metrics is not None:
            metrics.record(done, terms, tokens, seconds)
        logged = done % cfg.run.log_every == 0 or done == total or done == start + 1
        if rank == 0 and logged:
            elapsed = time.perf_counter() - t_run
            eta = elapsed / (done - start) * (total - done)
            parts = " ".join(f"{k}={v:.3f}" for k, v in terms.items() if k != "total")
            log.info(
                f"[larimar] step {done}/{total} loss={terms['total']:.4f} {parts} beta={b:.3f} "
                f"tokens/s={tokens / seconds:,.0f} step={seconds:.2f}s ETA {eta:.0f}s"
            )

        reporting = done % cfg.run.checkpoint_every == 0 or done == total or done % cfg.run.log_every == 0
        if validator is not None and reporting:
            t_val = time.perf_counter()
            val = validator.metrics(engine.module, lambda v: _sum_over_ranks(v, device))
            report.update(val, **{"time/validation": time.perf_counter() - t_val})
            if rank == 0:
                log.info(f"[larimar] step {done} " + " ".join(f"{k}={v:.4f}" for k, v in val.items()))
        if record is not None and logged:
            record.append(report)

        if done % cfg.run.checkpoint_every == 0 or done == total:
            with tempfile.TemporaryDirectory() as tmp:
                # ZeRO: every rank writes its shard; frozen backbone weights are left out.
                engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=frozen)
                if rank == 0:
                    state = {"step": done, "position": vars(position), "time": time.time()}
                    (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
                    if cfg.run.checkpoint_score:  # the best checkpoint is exported from here after the run
                        _exportable(engine.module, cfg).save_pretrained(Path(tmp) / MODEL_DIR)
                ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp))
            if metrics is not None:
                metrics.checkpointed(time.time())
        elif done % cfg.run.log_every == 0:
            ray.train.report(report)

    if rank == 0:
        path = export_model(_exportable(engine.module, cfg), f"{run_dir(cfg)}/{MODEL_DIR}")
        log.info(f"[larimar] exported the model to {path}")
    if metrics is not None:
        metrics.close()


def _exportable(module: LarimarModel, cfg: TrainConfig) -> LarimarModel:
    """ZeRO-2 keeps whole weights on every rank; bf16 ones are exported as fp32 for the library."""
    return module.float() if cfg.deepspeed.precision == "bf16" else module


# -- the driver side -------------------------------------------------------------------------


def export_best(result, cfg: TrainConfig) -> dict | None:
    """With ``run.checkpoint_score`` set, copy the best kept checkpoint's model (by that reported
    metric, Ray's CheckpointConfig ranking) over ``<run>/model``; returns its metrics."""
    import pyarrow.fs

    if not cfg.run.checkpoint_score or not result.best_checkpoints:
        return None
    key = cfg.run.checkpoint_score
    scored = [(c, m) for c, m in result.best_checkpoints if m.get(key) is not None]
    if not scored:
        return None
    pick = min if cfg.run.checkpoint_score_order == "min" else max
    checkpoint, metrics = pick(scored, key=lambda cm: cm[1][key])
    fs, dest = _filesystem(f"{run_dir(cfg)}/{MODEL_DIR}")
    fs.delete_dir_contents(dest, missing_dir_ok=True)
    pyarrow.fs.copy_files(
        f"{checkpoint.path}/{MODEL_DIR}", dest, source_filesystem=checkpoint.filesystem, destination_filesystem=fs
    )
    log.info(f"[larimar] exported the best checkpoint (step {metrics.get('step')}, {key}={metrics[key]:.4f})")
    return metrics


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Make a local storage_path and data.source absolute: workers and Ray run in other directories."""
    from larimar.sources import resolve_source

    if "://" not in cfg.run.storage_path:
        cfg.run.storage_path = str(Path(cfg.run.storage_path).expanduser().resolve())
    if cfg.data.source is not None:  # null: fact sentences only (data.facts)
        cfg.data.source = str(resolve_source(cfg.data.source))
    cfg.data.facts = [str(resolve_source(p)) for p in cfg.data.facts]
    cfg.data.facts_exclude = [str(resolve_source(p)) for p in cfg.data.facts_exclude]
    cfg.data.edits = [str(resolve_source(p)) for p in cfg.data.edits]
    if cfg.run.init_from:
        from larimar.model import resolve_model_dir

        try:
            cfg.run.init_from = str(resolve_model_dir(cfg.run.init_from).resolve())
        except FileNotFoundError as err:
            raise ConfigError(f"run.init_from: {err}") from None
    if cfg.validation.enabled:
        cfg.validation.source = str(resolve_source(cfg.validation.source))
        if cfg.validation.counterfact:
            cfg.validation.counterfact = str(resolve_source(cfg.validation.counterfact))
    return cfg


def cpu_threads(cfg: TrainConfig) -> int:
    """Torch/OpenMP threads of one CPU worker: its whole cores (at least 1). The plain-loop
    baseline of jobs/bench_train.py uses the same number."""
    return max(1, int(cfg.scaling.cpus_per_worker))


def worker_env(cfg: TrainConfig) -> dict[str, str]:
    """Environment of the training workers: DeepSpeed's accelerator must be chosen explicitly."""
    env = {"DS_ACCELERATOR": "cuda" if cfg.scaling.use_gpu else "cpu", "TOKENIZERS_PARALLELISM": "false"}
    if not cfg.scaling.use_gpu:
        env["OMP_NUM_THREADS"] = str(cpu_threads(cfg))
    for name in ("LARIMAR_CACHE_DIR", "HF_HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def make_trainer(cfg: TrainConfig, dataset, callbacks: list | None = None, validation_texts: list[str] | None = None):
    """The TorchTrainer for `cfg`, reading the Ray dataset `dataset` as the "train" split.

    `callbacks`: Ray Train callbacks (a Tune trial passes TuneReportCallback). With
    ``validation.enabled`` the held-out chunks travel in the loop config: `validation_texts` if
    given (a sweep prepares them once), else prepared here."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    loop_config: dict = {"train": to_dict(cfg)}
    if cfg.validation.enabled:
        from larimar.train.validation import prepare_validation_texts

        loop_config["validation_texts"] = (
            validation_texts if validation_texts is not None else prepare_validation_texts(cfg)
        )
    s, r = cfg.scaling, cfg.run
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(
            name=r.name,
            storage_path=r.storage_path,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=r.keep_checkpoints,
                checkpoint_score_attribute=r.checkpoint_score,
                checkpoint_score_order=r.checkpoint_score_order,
            ),
            worker_runtime_env={"env_vars": worker_env(cfg)},
            callbacks=callbacks,
        ),
        datasets={"train": dataset},
    )


def fit(cfg: TrainConfig, chunks) -> dict:
    """Train on the prepared chunk dataset (`larimar.train.data.prepare_chunks`); returns a summary.

    Joins the cluster in RAY_ADDRESS (set inside ``ray job submit``; ``RAY_ADDRESS=auto`` joins a
    ``ray start`` cluster on this machine) or an already initialised Ray; otherwise starts a local
    Ray for the run (``address="local"``: never a stale cluster recorded in /tmp/ray) and shuts
    it down afterwards.
    """
    import ray

    from larimar.train.data import to_ray_dataset

    started = not ray.is_initialized()
    if started and os.environ.get("RAY_ADDRESS"):
        ray.init()
    elif started:
        # Logical CPUs: Ray Train's controller and Ray Data's split coordinator need none, the
        # workers cpus_per_worker each; over-committing a small machine is deliberate.
        need = int(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + 0.999)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need))
    t0 = time.perf_counter()
    write_config(to_dict(cfg), run_dir(cfg))  # the resolved config, beside metrics.jsonl
    try:
        result = make_trainer(cfg, to_ray_dataset(chunks)).fit()
        best = export_best(result, cfg)
    finally:
        if started:
            ray.shutdown()
    return {
        "metrics": dict(result.metrics or {}),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "model": f"{run_dir(cfg)}/{MODEL_DIR}",
        "best": best,
        "seconds": time.perf_counter() - t0,
    }
