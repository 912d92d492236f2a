"""A training run's checkpoints as models, so that learning curves can evaluate each step's weights.

`jobs/train.py` keeps `run.keep_checkpoints` Ray checkpoints, each a DeepSpeed checkpoint (tag
`deepspeed`) plus `train_state.json`. Frozen backbones are left out of them (they reload from the
backbone registry), so a model is the run's config plus the checkpoint's trainable weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from larimar.config import ConfigError
from larimar.model import LarimarConfig, LarimarModel

DS_TAG = "deepspeed"  # DeepSpeed checkpoint tag (sub-directory) inside a Ray checkpoint
STATE_FILE = "train_state.json"
MODEL_STATES = "mp_rank_00_model_states.pt"  # ZeRO-1/2: the whole module, written by rank 0


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint in a run directory, by step."""
    out = []
    for state in Path(run_dir).glob(f"checkpoint_*/{STATE_FILE}"):
        if (state.parent / DS_TAG / MODEL_STATES).exists():
            out.append((int(json.loads(state.read_text())["step"]), state.parent))
    return sorted(out)


def load_checkpoint_model(cfg: LarimarConfig, checkpoint: str | Path) -> LarimarModel:
    """The model a run held at `checkpoint`: backbones from the registry, trained weights from the file."""
    path = Path(checkpoint) / DS_TAG / MODEL_STATES
    if not path.exists():
        raise ConfigError(f"checkpoint {checkpoint}: no {DS_TAG}/{MODEL_STATES} (not a jobs/train.py checkpoint)")
    state = torch.load(path, map_location="cpu", weights_only=False)["module"]
    model = LarimarModel(cfg)
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ConfigError(f"checkpoint {checkpoint} does not fit the config's model: unknown weights {unknown[:3]}")
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ConfigError(f"checkpoint {checkpoint} does not fit the config's model: shape mismatch at {wrong[:3]}")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - state.keys())
    if missing:
        raise ConfigError(f"checkpoint {checkpoint} lacks trained weights {missing[:3]}")
    model.load_state_dict(state, strict=False)
    return model.eval()
