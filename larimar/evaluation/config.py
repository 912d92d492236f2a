"""What an evaluation run is: `EvalConfig` and the experiments it can run.

This module is light on purpose (no torch): `larimar eval --help` builds its flags from these
fields, so the command line, YAML files and ``key=value`` overrides share one set of names and
one set of defaults (the `larimar.config` loader), and the help answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from larimar.config import ConfigError

EXPERIMENTS = {
    "counterfact": "larimar.evaluation.counterfact",
    "zsre": "larimar.evaluation.zsre",
    "sequential": "larimar.evaluation.sequential",
    "forgetting": "larimar.evaluation.forgetting",
    "capacity": "larimar.evaluation.capacity",
    "long-context": "larimar.evaluation.long_context",
    "timing": "larimar.evaluation.timing",
    "perplexity": "larimar.evaluation.perplexity",
    "generation": "larimar.evaluation.generation",
}
BASELINE_EXPERIMENTS = ("counterfact", "zsre", "sequential")


@dataclass
class EvalConfig:
    experiment: str = field(metadata={"help": "one of EXPERIMENTS"})
    model: str = field(
        metadata={"help": "a saved model directory, or a recipe name/YAML for an untrained model (smoke runs)"}
    )
    data: str = field(metadata={"help": "a benchmark JSON file, or synthetic[:N]"})
    out: str = field(default="runs/eval", metadata={"help": "directory of <experiment>.json / .md (/ .png)"})
    limit: int | None = field(default=None, metadata={"help": "first N records of --data"})
    seed: int = field(default=0, metadata={"help": "samples, orders and random keys"})
    workers: int = field(default=0, metadata={"help": "0: single process; N > 0: N Ray tasks, each loading the model"})
    batch_size: int = field(default=32, metadata={"help": "prompts per decoder pass"})
    slots: int | None = field(default=None, metadata={"help": "K of the memories; default the model's trained K"})
    ridge: float = field(
        default=1e-3, metadata={"help": "SequentialMemory ridge (keeps C invertible before K keys exist)"}
    )
    memory_keys: str = field(
        default="linear",
        metadata={"help": "SequentialMemory addressing: 'linear' (the paper) or 'relu' (random features)"},
    )
    scope_model: str | None = field(
        default="minilm-l6", metadata={"help": "sentence embedder of the scope detector; none disables it"}
    )
    scope_threshold: float = field(
        default=0.7, metadata={"help": "cosine similarity at or above which a query is in scope"}
    )
    subject_threshold: float = field(
        default=0.3, metadata={"help": "cosine a query naming an edit's subject needs (larimar.scope)"}
    )
    use_subjects: bool = field(
        default=True, metadata={"help": "pass each case's subject with its edit (the scope detector's subject rule)"}
    )
    readout: str | None = field(
        default=None, metadata={"help": "override the model's read-out convention: 'raw' or 'value_norm'"}
    )
    decoder_precision: str = field(
        default="fp32",
        metadata={"help": "the decoder's weights at inference: fp32 (as trained), bf16 or int8 (larimar.precision)"},
    )
    encoder_precision: str = field(
        default="fp32",
        metadata={"help": "the encoder backbone at inference: fp32 (as trained) or bf16 (larimar.precision)"},
    )
    use_scope: bool = field(default=False, metadata={"help": "memory experiments: gate reads with the scope detector"})
    checkpoints: int = field(default=10, metadata={"help": "sequential: evaluate after every N/checkpoints edits"})
    sizes: list[int] = field(
        default_factory=list, metadata={"help": "capacity: N values; forgetting: N values; long-context: fact counts"}
    )
    slots_list: list[int] = field(
        default_factory=list, metadata={"help": "capacity: the K values (default K/2, K, 2K)"}
    )
    trials: int = field(default=10, metadata={"help": "forgetting: facts forgotten (one at a time) per N"})
    segment_facts: int = field(
        default=16, metadata={"help": "long-context: facts per first-level memory and fan-in per level"}
    )
    eval_cap: int = field(
        default=256, metadata={"help": "most facts whose recall is measured per point (a seeded sample)"}
    )
    repeats: int = field(default=1, metadata={"help": "timing: passes over the cases (after one warm-up edit)"})
    progress: bool = field(default=True, metadata={"help": "a progress bar on stderr"})
    editor: str = field(
        default="larimar",
        metadata={"help": "or a peer baseline of larimar.baselines (counterfact, zsre, sequential only)"},
    )
    editor_options: list[str] = field(default_factory=list, metadata={"help": "key=value settings of the baseline"})

    def __post_init__(self) -> None:
        if isinstance(self.scope_model, str) and self.scope_model.lower() == "none":
            self.scope_model = None  # --scope-model none, as on the command line
        if self.editor != "larimar":
            from larimar.baselines import editor_config

            editor_config(self.editor, self.editor_options)  # unknown editor or option: ConfigError now
            if self.experiment not in BASELINE_EXPERIMENTS:
                raise ConfigError(
                    f"--editor {self.editor}: baselines run {sorted(BASELINE_EXPERIMENTS)}, not {self.experiment!r}"
                )
        from larimar.precision import ENCODER_PRECISIONS, PRECISIONS  # here: `--help` must not load torch

        if self.decoder_precision not in PRECISIONS:
            raise ConfigError(
                f"--decoder-precision must be one of {', '.join(PRECISIONS)}, got {self.decoder_precision!r}"
            )
        if self.encoder_precision not in ENCODER_PRECISIONS:
            raise ConfigError(
                f"--encoder-precision must be one of {', '.join(ENCODER_PRECISIONS)}, got {self.encoder_precision!r}"
            )
        if self.readout not in (None, "raw", "value_norm"):
            raise ConfigError(f"--readout must be 'raw' or 'value_norm', got {self.readout!r}")
        if not -1.0 <= self.subject_threshold <= 1.0:
            raise ConfigError(f"--subject-threshold is a cosine similarity in [-1, 1], got {self.subject_threshold}")
        if self.memory_keys not in ("linear", "relu"):
            raise ConfigError(f"--memory-keys must be 'linear' or 'relu', got {self.memory_keys!r}")
        for name in ("batch_size", "checkpoints", "trials", "segment_facts", "eval_cap", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.slots is not None and self.slots < 1:
            raise ConfigError(f"--slots must be >= 1, got {self.slots}")
        if not -1.0 <= self.scope_threshold <= 1.0:
            raise ConfigError(f"--scope-threshold is a cosine similarity in [-1, 1], got {self.scope_threshold}")
