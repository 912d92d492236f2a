"""The ``larimar`` command: one entry point for the recipes.

    larimar train --config tiny [key=value ...]          Ray Train + DeepSpeed (larimar.cli.train)
    larimar eval counterfact --model larimar-smol-v3 --data FILE [key=value ...]   (larimar.cli.eval)
    larimar derive --from larimar-smol-v2 --out DIR [key=value ...]   change how a model reads (larimar.cli.derive)
    larimar sweep --config sweep-tiny [key=value ...]    Ray Tune (larimar.cli.sweep)
    larimar serve [--config settings.yaml] [key=value ...]   the Ray Serve application (larimar.cli.serve)
    larimar demo [--serve] [--train]                      edit, recall, forget (larimar.cli.demo)
    larimar recipes                                       the bundled training recipes and sweeps

Every subcommand takes ``key=value`` overrides of its typed config (`larimar.config`); a bad key
or value exits with status 2 and a message naming it. Subcommands are imported only when run, and
each parses its arguments before importing torch, so ``--help`` answers at once. The scripts in
``jobs/`` and ``tune/`` call the same functions (``ray job submit -- python jobs/train.py ...``).
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

COMMANDS = {
    "train": ("larimar.cli.train", "train a recipe on Ray Train + DeepSpeed"),
    "eval": ("larimar.cli.eval", "evaluate a model: counterfact, zsre, sequential, forgetting, ..."),
    "derive": ("larimar.cli.derive", "a new model from a trained one with its config changed (no training)"),
    "sweep": ("larimar.cli.sweep", "a Ray Tune sweep over training runs"),
    "serve": ("larimar.cli.serve", "start the Ray Serve application and keep it running"),
    "demo": ("larimar.cli.demo", "write facts, ask about them, forget one: in Python, then over HTTP"),
    "recipes": (None, "list the bundled recipes and sweeps"),
}


def config_error(err: Exception) -> NoReturn:
    """Every subcommand's answer to a bad config: one line naming the key, status 2, no traceback."""
    print(f"config error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return f"usage: larimar <command> [options]\n\ncommands:\n{rows}\n\nlarimar <command> --help for its options."


def main(argv: list[str] | None = None) -> int:
    """The console script (``sys.exit(main())``): 0 on success; a subcommand's errors exit by themselves."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"larimar: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    if command == "recipes":
        from larimar import recipes

        print("\n".join(recipes.names()))
        return 0
    module = importlib.import_module(COMMANDS[command][0])
    module.main(rest, prog=f"larimar {command}")  # returns its summary (for Python callers), not a status
    return 0


if __name__ == "__main__":
    sys.exit(main())
