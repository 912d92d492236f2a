"""The typed config of a distributed training run (`jobs/train.py`), one YAML file per model size.

Sections mirror who consumes them: `model` builds the `LarimarModel`, `data` the corpus
(`larimar.train.data`), `optim` the optimizer and schedules, `scaling` Ray Train's `ScalingConfig`,
`run` its `RunConfig`, `deepspeed` the engine, `debug` the fault-injection knob the tests use.
Everything a typo can break is checked here, in the driver, so a bad config fails with a
`ConfigError` naming the key before Ray starts, not minutes later inside a worker.

Units: a *step* is one optimizer step; it consumes `grad_accumulation` micro-batches of
`micro_batch_episodes` episodes per worker, each episode `data.episode_size` chunks written into
one memory. Global batch = micro_batch_episodes * grad_accumulation * num_workers episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from larimar import recipes
from larimar.config import ConfigError, load
from larimar.model import LarimarConfig

SHARED_WIKITEXT = "../shared/data/wikitext-2-raw/wiki.valid.raw"
SHARED_WIKITEXT_TEST = "../shared/data/wikitext-2-raw/wiki.test.raw"  # held out from training


@dataclass
class DataConfig:
    source: str | None = SHARED_WIKITEXT  # local file or directory (.raw/.txt/.jsonl), a hub dataset name,
    # or null for fact sentences only
    facts: list[str] = field(default_factory=list)  # CounterFact / zsRE JSON files whose fact sentences are
    # added as training text (larimar.train.fact_corpus); name such a model "...-facts"
    facts_exclude: list[str] = field(default_factory=list)  # evaluation files whose cases are kept out of training
    # (of data.facts and data.edits)
    edits: list[str] = field(default_factory=list)  # files of edits with other wordings (CounterFact, KnowEdit,
    # zsRE): keyed episodes, "write the fact, answer another prompt of it" (larimar.train.fact_corpus.edit_rows)
    edit_queries: int = 4  # per edit: its own prompt plus up to this many other prompts, one row each
    exclude_subjects: list[str] = field(default_factory=list)  # more subjects kept out of all training text
    # (e.g. the demo's facts)
    source_limit: int | None = None  # with data.facts: at most this many data.source chunks join the facts
    hub_config: str | None = None  # hub dataset config, e.g. wikitext-103-raw-v1
    split: str = "train"  # hub split
    text_field: str = "text"  # the text column of .jsonl files and hub datasets
    episode_size: int = 16  # E: chunks written into one memory (the paper's episode length)
    chunk_tokens: int | None = None  # decoder tokens per chunk without BOS/EOS; None: model.max_length - 2,
    # so that "<bos> chunk <eos>" is exactly max_length (64 in the paper)
    min_chunk_tokens: int = 8  # a paragraph's trailing piece shorter than this is dropped
    limit: int | None = None  # keep at most this many chunks (quick runs); None: all
    shuffle_seed: int | None = 0  # chunks are shuffled once when prepared, so episodes mix articles

    def __post_init__(self) -> None:
        if self.edit_queries < 0:
            raise ValueError(f"data.edit_queries must be >= 0, got {self.edit_queries}")
        if self.source is None and not self.facts and not self.edits:
            raise ValueError("data.source is null and data.facts is empty: there is no training text")
        if self.episode_size < 1:
            raise ValueError(f"data.episode_size must be >= 1, got {self.episode_size}")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError(f"data.chunk_tokens must be >= 1 or null, got {self.chunk_tokens}")
        if self.min_chunk_tokens < 1:
            raise ValueError(f"data.min_chunk_tokens must be >= 1, got {self.min_chunk_tokens}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or null, got {self.limit}")


@dataclass
class OptimConfig:
    steps: int = 1000  # optimizer steps in the whole run
    lr: float = 5e-5  # peak learning rate (the paper's 1.3B model)
    warmup_steps: int = 100  # linear warmup to lr, then linear decay to 0 at `steps`
    weight_decay: float = 0.0
    micro_batch_episodes: int = 1  # episodes per worker per forward pass
    grad_accumulation: int = 1  # micro-batches per optimizer step (DeepSpeed gradient_accumulation_steps)
    clip: float = 1.0  # gradient-norm clipping (DeepSpeed gradient_clipping); 0 disables

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_episodes", "grad_accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"optim.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.clip < 0 or self.weight_decay < 0:
            raise ValueError("optim.warmup_steps, optim.clip and optim.weight_decay must be >= 0")


@dataclass
class ScalingSection:
    num_workers: int = 2  # data-parallel DeepSpeed ranks
    use_gpu: bool = False  # one GPU per worker, NCCL; else CPU and gloo
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"scaling.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"scaling.cpus_per_worker must be > 0, got {self.cpus_per_worker}")


@dataclass
class RunSection:
    name: str = "larimar"  # stable: rerunning with the same (storage_path, name) resumes
    storage_path: str = "runs"  # local directory (relative to the working directory) or s3://...
    checkpoint_every: int = 100  # steps between checkpoints; the last step always checkpoints
    keep_checkpoints: int = 2  # CheckpointConfig(num_to_keep)
    max_failures: int = 1  # worker-group restarts (from the latest checkpoint) before giving up
    log_every: int = 10  # steps between progress lines and ray.train.report calls
    seed: int = 0
    init_from: str | None = None  # a saved model (directory or bundled name) whose weights start a new run
    # (fine-tuning); modules it lacks keep their init. Ignored when resuming from a checkpoint.
    checkpoint_score: str | None = None  # a reported metric (e.g. val/loss, val/counterfact_es): the kept
    # checkpoints are the best by it (Ray's CheckpointConfig) and the exported model is the best one
    checkpoint_score_order: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty name without '/', got {self.name!r}")
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_failures < -1:
            raise ValueError(f"run.max_failures must be >= -1 (-1: unlimited), got {self.max_failures}")
        if self.checkpoint_score is not None and not self.checkpoint_score.strip():
            raise ValueError("run.checkpoint_score must name a reported metric (e.g. val/loss) or be null")


@dataclass
class DeepSpeedSection:
    zero_stage: Literal[0, 1, 2] = 2  # ZeRO-2 shards optimizer state and gradients; weights stay whole
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 for GPUs; CPUs train in fp32
    overlap_comm: bool = False  # overlap reduce with backward (GPU only; no gain over gloo)


@dataclass
class DebugConfig:
    fail_at_step: int | None = None  # rank 0 raises once at this step, on the first attempt only


@dataclass
class ValidationConfig:
    """Held-out metrics computed inside the training loop at every ``ray.train.report`` (Tune's
    schedulers act on them): reconstruction through memory on held-out text chunks, written
    ``episode_size`` at a time and in single memories of each ``capacity_sizes`` N, and ES/PS/NS
    on a small CounterFact slice. Off by default: plain training runs do not pay for it."""

    enabled: bool = False
    source: str = SHARED_WIKITEXT_TEST  # held-out text, chunked like data.source (never trained on)
    chunks: int = 64  # held-out chunks: episodes of N = data.episode_size for val/* metrics
    capacity_sizes: list[int] = field(default_factory=list)  # N values: one memory of N chunks each
    decode_cap: int = 32  # most chunks decoded per measurement (the latent metrics use all of them)
    counterfact: str | None = None  # CounterFact JSON for val/ES, val/PS, val/NS; None skips them
    counterfact_cases: int = 8  # first cases of that file
    seed: int = 0  # shuffles the held-out chunks before taking them

    def __post_init__(self) -> None:
        for name in ("chunks", "decode_cap", "counterfact_cases"):
            if getattr(self, name) < 1:
                raise ValueError(f"validation.{name} must be >= 1, got {getattr(self, name)}")
        if any(n < 1 for n in self.capacity_sizes):
            raise ValueError(f"validation.capacity_sizes must be >= 1, got {self.capacity_sizes}")


@dataclass
class TrainConfig:
    model: LarimarConfig = field(default_factory=LarimarConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    debug: DebugConfig = field(default_factory=DebugConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        limit = self.model.max_length - 2
        if self.data.chunk_tokens is not None and self.data.chunk_tokens > limit:
            raise ConfigError(
                f"data.chunk_tokens: {self.data.chunk_tokens} does not fit model.max_length="
                f"{self.model.max_length} with BOS and EOS; expected <= {limit}"
            )
        if self.optim.warmup_steps > self.optim.steps:
            raise ConfigError(f"optim.warmup_steps: {self.optim.warmup_steps} exceeds optim.steps={self.optim.steps}")
        if self.deepspeed.precision == "bf16" and not self.scaling.use_gpu:
            # The CPU accelerator supports bf16 only with mkldnn kernels; fp32 is the tested CPU path.
            raise ConfigError("deepspeed.precision: bf16 needs scaling.use_gpu=true; train on CPU in fp32")
        if self.validation.enabled and self.validation.chunks < self.data.episode_size:
            raise ConfigError(
                f"validation.chunks: {self.validation.chunks} cannot fill one episode of "
                f"data.episode_size={self.data.episode_size}"
            )
        if self.debug.fail_at_step is not None and not 1 <= self.debug.fail_at_step <= self.optim.steps:
            raise ConfigError(
                f"debug.fail_at_step: expected a step in 1..{self.optim.steps}, got {self.debug.fail_at_step}"
            )

    @property
    def chunk_tokens(self) -> int:
        return self.data.chunk_tokens or self.model.max_length - 2

    @property
    def chunks_per_micro_batch(self) -> int:
        return self.optim.micro_batch_episodes * self.data.episode_size

    def deepspeed_config(self) -> dict:
        """The DeepSpeed JSON config. No "optimizer" or "scheduler" sections: DeepSpeed's own AdamW
        JIT-compiles a C++ op for minutes on CPU, so the client passes torch AdamW and a LambdaLR
        (the same schedule as `larimar.train.loop.train_plain`, and extendable on resume)."""
        o = self.optim
        return {
            "train_micro_batch_size_per_gpu": o.micro_batch_episodes,
            "gradient_accumulation_steps": o.grad_accumulation,
            "train_batch_size": o.micro_batch_episodes * o.grad_accumulation * self.scaling.num_workers,
            "gradient_clipping": o.clip,
            "zero_optimization": {"stage": self.deepspeed.zero_stage, "overlap_comm": self.deepspeed.overlap_comm},
            "bf16": {"enabled": self.deepspeed.precision == "bf16"},
            "fp16": {"enabled": False},
            "steps_per_print": 10**9,  # progress is printed by the loop, not by DeepSpeed
            "wall_clock_breakdown": False,
        }


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML plus ``key=value`` overrides -> TrainConfig; raises ConfigError naming the key.

    `path` may also be a bundled recipe's name (`larimar.recipes`), e.g. ``larimar-smol``."""
    if path is not None:
        path = recipes.resolve(path)
    return load(TrainConfig, path, overrides)
