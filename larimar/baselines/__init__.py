"""Peer knowledge editors on the decoder Larimar is built on, behind one interface (`Editor`).

    ft-l   constrained fine-tuning of one MLP layer (Zhu et al. 2020; ROME's FT+L)
    ike    in-context editing (Zheng et al. 2023)
    rome   rank-one model editing with cached key statistics (Meng et al. 2022)
    grace  codebook adaptor at one layer (Hartvigsen et al. 2023)

`make_editor(name, lm, tokenizer, bos_id, options)` builds one; options are ``key=value``
strings for the method's config dataclass (e.g. ``layer=5``, ``v_steps=10``). Each evaluation
experiment that compares editors runs them with its own `evaluate_editor` (`larimar.evaluation.
counterfact`, `.zsre`, `.sequential`; ``jobs/eval.py --editor NAME``), the speed / accuracy
benchmark is `larimar.evaluation.bench` (``jobs/bench_edit.py``).
"""

from __future__ import annotations

from larimar.baselines.base import EditRequest, Editor
from larimar.baselines.ft_l import FTLConfig, FTLEditor
from larimar.baselines.grace import GRACEConfig, GRACEEditor
from larimar.baselines.ike import IKEConfig, IKEEditor
from larimar.baselines.rome import ROMEConfig, ROMEEditor
from larimar.config import ConfigError, apply_overrides, from_dict

EDITORS: dict[str, tuple[type[Editor], type]] = {
    "ft-l": (FTLEditor, FTLConfig),
    "ike": (IKEEditor, IKEConfig),
    "rome": (ROMEEditor, ROMEConfig),
    "grace": (GRACEEditor, GRACEConfig),
}


def editor_config(name: str, options: list[str] | None = None):
    """The method's config from ``key=value`` options; an unknown method or key raises ConfigError."""
    if name not in EDITORS:
        raise ConfigError(f"--editor: unknown editor {name!r}; expected larimar or one of {sorted(EDITORS)}")
    try:
        return from_dict(EDITORS[name][1], apply_overrides({}, list(options or [])), prefix=name)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def make_editor(name: str, lm, tokenizer, bos_id: int | None = None, options: list[str] | None = None) -> Editor:
    cls, _ = EDITORS[name] if name in EDITORS else (None, None)
    cfg = editor_config(name, options)
    return cls(lm, tokenizer, bos_id, cfg)


__all__ = ["EDITORS", "EditRequest", "Editor", "editor_config", "make_editor"]
