"""What every experiment receives: the run's settings (`EvalConfig`) and the loaded model (`EvalContext`).

A context is built once per process: in the driver for single-process runs, in each Ray task
for `--workers N`. Everything random is seeded from `EvalConfig.seed` (torch, the memories'
reference matrices, fact order), so a fixed seed gives the same numbers on any number of workers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from larimar.config import ConfigError, from_dict, load_yaml
from larimar.editor import EditableMemory, LarimarEditor
from larimar.evaluation.data import Fact, load_facts
from larimar.model import LarimarConfig, LarimarModel, bundled_models

CONFIG_DIR = Path(__file__).resolve().parents[2] / "jobs" / "configs"
BASELINE_EXPERIMENTS = ("counterfact", "zsre", "sequential")


@dataclass
class EvalConfig:
    experiment: str
    model: str  # a saved model directory, or a jobs/configs name/YAML for an untrained model (smoke runs)
    data: str  # a benchmark JSON file, or synthetic[:N]
    out: str = "runs/eval"
    limit: int | None = None  # first N records of --data
    seed: int = 0
    workers: int = 0  # 0: single process; N > 0: N Ray tasks, each loading the model
    batch_size: int = 32  # prompts per decoder pass
    slots: int | None = None  # K of the memories; default the model's trained K
    ridge: float = 1e-3  # SequentialMemory ridge (keeps C invertible before K keys exist)
    memory_keys: str = "linear"  # SequentialMemory addressing: "linear" (the paper) or "relu" (random features)
    scope_model: str | None = "minilm-l6"  # sentence embedder of the scope detector; None disables it
    scope_threshold: float = 0.7  # cosine similarity at or above which a query is in scope
    subject_threshold: float = 0.3  # cosine a query naming an edit's subject needs (larimar.scope)
    use_subjects: bool = True  # pass each case's subject with its edit (the scope detector's subject rule)
    readout: str | None = None  # override the model's read-out convention: "raw" or "value_norm"
    use_scope: bool = False  # memory experiments: gate reads with the scope detector
    checkpoints: int = 10  # sequential: evaluate after every N/checkpoints edits
    sizes: list[int] = field(default_factory=list)  # capacity: N values; forgetting: N values; long-context: fact counts
    slots_list: list[int] = field(default_factory=list)  # capacity: the K values (default K/2, K, 2K)
    trials: int = 10  # forgetting: facts forgotten (one at a time) per N
    segment_facts: int = 16  # long-context: facts per first-level memory and fan-in per level
    eval_cap: int = 256  # most facts whose recall is measured per point (a seeded sample)
    repeats: int = 1  # timing: passes over the cases (after one warm-up edit)
    progress: bool = True
    editor: str = "larimar"  # or a peer baseline of larimar.baselines (counterfact, zsre, sequential only)
    editor_options: list[str] = field(default_factory=list)  # key=value settings of the baseline

    def __post_init__(self) -> None:
        if self.editor != "larimar":
            from larimar.baselines import editor_config

            editor_config(self.editor, self.editor_options)  # unknown editor or option: ConfigError now
            if self.experiment not in BASELINE_EXPERIMENTS:
                raise ConfigError(f"--editor {self.editor}: baselines run {sorted(BASELINE_EXPERIMENTS)}, "
                                  f"not {self.experiment!r}")
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


def load_model(spec: str) -> LarimarModel:
    """A saved model directory, or (for smoke runs) an untrained model from a config's ``model:`` section."""
    path = Path(spec)
    if path.is_dir() or spec in bundled_models():
        return LarimarModel.from_pretrained(spec)
    yaml_path = path if path.suffix in (".yaml", ".yml") else CONFIG_DIR / f"{spec}.yaml"
    if not yaml_path.exists():
        raise ConfigError(f"--model: {spec!r} is neither a saved model directory nor a config name in {CONFIG_DIR}")
    cfg = from_dict(LarimarConfig, load_yaml(yaml_path).get("model", {}))
    return LarimarModel(cfg).eval()


class EvalContext:
    def __init__(self, cfg: EvalConfig, model: LarimarModel | None = None, needs_scope: bool = True):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model = model if model is not None else load_model(cfg.model)
        scope_model = cfg.scope_model if needs_scope else None
        self.editor = LarimarEditor(self.model, scope_model=scope_model, scope_threshold=cfg.scope_threshold,
                                    subject_threshold=cfg.subject_threshold, readout=cfg.readout)

    def subjects(self, subjects: list[str]) -> list[str | None] | None:
        """What to pass as `edit(subject=...)`: the cases' subjects, unless --no-subjects."""
        return [s or None for s in subjects] if self.cfg.use_subjects else None

    @property
    def slots(self) -> int:
        return self.cfg.slots or self.model.cfg.memory.slots

    def memory(self, slots: int | None = None, capacity: int | None = None, scope: bool = True) -> EditableMemory:
        """A fresh memory seeded by the run's seed; scope=False drops its scope index (faster writes)."""
        mem = self.editor.create_memory(slots=slots or self.slots, capacity=capacity, ridge=self.cfg.ridge,
                                        seed=self.cfg.seed, keys=self.cfg.memory_keys)
        if not scope:
            mem.scope = None
        return mem

    @functools.cached_property
    def baseline(self):
        """The peer editor of ``--editor`` on this model's decoder LM (with z = 0 it is the plain LM)."""
        from larimar.baselines import make_editor

        return make_editor(self.cfg.editor, self.model.decoder.lm, self.model.decoder_tokenizer, self.model.bos_id,
                           self.cfg.editor_options)

    @functools.cached_property
    def facts(self) -> list[Fact]:
        return load_facts(self.cfg.data, self.cfg.limit, self.cfg.seed)
