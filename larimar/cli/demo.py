"""``larimar demo``: edit a Larimar's memory, recall, forget; in Python, then over HTTP.

    larimar demo [--model larimar-smol-v3] [--out runs/demo] [--serve]      (python jobs/demo.py: the same)
    larimar demo --train [--config demo] [key=value ...]

By default it loads the shipped Larimar-smol v3 adapter (MiniLM-L6 + SmolLM2-135M, both
frozen from their PyPI wheels; larimar/pretrained) and writes counterfactual world facts
("The Eiffel Tower is located in the city of Rome"). --train instead trains a small Larimar on
self-generated facts for ~1.5 minutes on 2 CPU cores (plain PyTorch loop, `larimar.train.loop`),
saves it with `save_pretrained` and writes synthetic facts it never saw together. Either way it
uses the editing API (`larimar.editor`): writes the facts, asks about them, forgets one and asks
again. With --serve it then starts the Serve application (larimar/serving/app.py) on an embedded local Ray
and does the same over HTTP. --model takes a saved directory or a bundled name. Writes
summary.json to --out.
"""

from __future__ import annotations

import argparse


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="demo", help="--train's settings: a DemoConfig YAML or recipe name")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument(
        "--model",
        help="saved model directory or bundled name (default: the shipped "
        "larimar.model.DEFAULT_MODEL, larimar-smol-v3)",
    )
    parser.add_argument("--train", action="store_true", help="train the small synthetic-facts model first and use it")
    parser.add_argument("--serve", action="store_true", help="also run the edits over HTTP against Ray Serve")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 model.memory.slots=64")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    args = build_parser(prog).parse_args(argv)
    from larimar.cli import demo_story

    return demo_story.run(args)
