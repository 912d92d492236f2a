"""The training recipes and sweep configs that ship with the package (YAML files in this directory).

A recipe is named by its file stem (``tiny``, ``larimar-smol-v2``; sweeps are ``sweep-*``), so an
installed wheel trains ``larimar train --config tiny`` without a checkout. A path to any YAML file
works everywhere a name does. This is the one place that turns a name into a file: the training
loader, the sweep loader and the evaluation's "untrained model from a recipe" all call `resolve`.
"""

from __future__ import annotations

from pathlib import Path

from larimar.config import ConfigError

RECIPE_DIR = Path(__file__).resolve().parent


def names(prefix: str = "") -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if p.stem.startswith(prefix))


def is_name(spec: str | Path) -> bool:
    """A bare name (no directory, no .yaml suffix) that is not an existing file; names may hold dots
    (``larimar-1.3b``)."""
    text = str(spec)
    return not Path(text).exists() and "/" not in text and not text.endswith((".yaml", ".yml"))


def resolve(spec: str | Path, key: str = "--config") -> Path:
    """A YAML file as given, else the bundled recipe of that name; ConfigError naming `key` otherwise."""
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    if is_name(spec):
        recipe = RECIPE_DIR / f"{spec}.yaml"
        if recipe.exists():
            return recipe
        raise ConfigError(f"{key}: {str(spec)!r} is not a bundled recipe ({', '.join(names())})")
    raise ConfigError(f"{key}: {str(spec)!r} does not exist (a YAML file, or a recipe name: {', '.join(names())})")
