"""What every experiment receives: the run's settings (`EvalConfig`) and the loaded model (`EvalContext`).

A context is built once per process: in the driver for single-process runs, in each Ray task
for `--workers N`. Everything random is seeded from `EvalConfig.seed` (torch, the memories'
reference matrices, fact order), so a fixed seed gives the same numbers on any number of workers.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from larimar import recipes
from larimar.config import ConfigError, from_dict, load_yaml
from larimar.editor import EditableMemory, LarimarEditor
from larimar.benchmarks import Fact, load_facts
from larimar.evaluation.config import EvalConfig
from larimar.model import LarimarConfig, LarimarModel, bundled_models
from larimar.precision import set_decoder_precision, set_encoder_precision


def model_config(spec: str) -> LarimarConfig:
    """The config of a saved model (directory or bundled name), or of a recipe's ``model:`` section
    (a recipe name or YAML: an untrained model, for smoke runs), without loading any weights."""
    if Path(spec).is_dir() or spec in bundled_models():
        return LarimarModel.read_config(spec)
    try:
        yaml_path = recipes.resolve(spec, key="--model")
    except ConfigError:
        raise ConfigError(
            f"--model: {spec!r} is neither a saved model directory nor a recipe "
            f"({', '.join(bundled_models() + recipes.names())})"
        ) from None
    return from_dict(LarimarConfig, load_yaml(yaml_path).get("model", {}), "model")


def load_model(spec: str) -> LarimarModel:
    """A saved model directory, or (for smoke runs) an untrained model from a recipe's ``model:`` section."""
    if Path(spec).is_dir() or spec in bundled_models():
        return LarimarModel.from_pretrained(spec)
    return LarimarModel(model_config(spec)).eval()


class EvalContext:
    def __init__(self, cfg: EvalConfig, model: LarimarModel | None = None, needs_scope: bool = True):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model = model if model is not None else load_model(cfg.model)
        set_decoder_precision(self.model.decoder, cfg.decoder_precision)
        set_encoder_precision(self.model.encoder, cfg.encoder_precision)
        scope_model = cfg.scope_model if needs_scope else None
        self.editor = LarimarEditor(
            self.model,
            scope_model=scope_model,
            scope_threshold=cfg.scope_threshold,
            subject_threshold=cfg.subject_threshold,
            readout=cfg.readout,
        )

    def subjects(self, subjects: list[str]) -> list[str | None] | None:
        """What to pass as `edit(subject=...)`: the cases' subjects, unless --no-subjects."""
        return [s or None for s in subjects] if self.cfg.use_subjects else None

    @property
    def slots(self) -> int:
        return self.cfg.slots or self.model.cfg.memory.slots

    def memory(self, slots: int | None = None, capacity: int | None = None, scope: bool = True) -> EditableMemory:
        """A fresh memory seeded by the run's seed; scope=False drops its scope index (faster writes)."""
        mem = self.editor.create_memory(
            slots=slots or self.slots,
            capacity=capacity,
            ridge=self.cfg.ridge,
            seed=self.cfg.seed,
            keys=self.cfg.memory_keys,
        )
        if not scope:
            mem.scope = None
        return mem

    @functools.cached_property
    def baseline(self):
        """The peer editor of ``--editor`` on this model's decoder LM (with z = 0 it is the plain LM)."""
        from larimar.baselines import make_editor

        return make_editor(
            self.cfg.editor,
            self.model.decoder.lm,
            self.model.decoder_tokenizer,
            self.model.bos_id,
            self.cfg.editor_options,
        )

    def method_editor(self, capacity: int | None = None, scope: bool | None = None):
        """The method under evaluation as an `Editor`: ``--editor``'s baseline, or Larimar's memory
        (`MemoryEditor`; each reset a fresh memory of `capacity` facts, with the scope detector
        unless `scope` is False)."""
        if self.cfg.editor != "larimar":
            return self.baseline
        from larimar.evaluation.memory_editor import MemoryEditor

        scope = self.editor.scope_embedder is not None if scope is None else scope
        return MemoryEditor(
            lambda: self.memory(capacity=capacity, scope=scope), use_subjects=self.cfg.use_subjects, use_scope=scope
        )

    @functools.cached_property
    def facts(self) -> list[Fact]:
        return load_facts(self.cfg.data, self.cfg.limit, self.cfg.seed)
