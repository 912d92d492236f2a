"""``larimar eval``: a trained Larimar against the paper's claims, one experiment per command.

    larimar eval <experiment> --model DIR --data PATH [--limit N] [--seed S] --out DIR [--workers N] [key=value ...]
    python jobs/eval.py <experiment> ...                                   # the same

Every option is a field of `larimar.evaluation.config.EvalConfig`: ``--batch-size 16`` and
``batch_size=16`` are the same setting, with the same default and the same error naming it.

Experiments (logic and protocol notes in larimar/evaluation/<name>.py):
    counterfact   ES/PS/NS/Score with and without scope, and unedited (Table 2/8)
    zsre          edit / rephrase token accuracy and locality (Table 12)
    sequential    retention and held-out rephrase recall over N sequential edits (Table 3, Fig. 2b)
    forgetting    recall of a forgotten fact and the retained ones for N = 1, K, 2K (Table 4)
    capacity      recall vs N for several K (Fig. 2a/4)
    long-context  hierarchical memories over 64-256 facts (Table 6)
    timing        per-edit encode / write / read wall time, apart from scoring (Table 1)
    perplexity    WikiText perplexity with z = 0 against the base LM (language modelling kept)
    generation    greedy continuation of each edited prompt begins with the new object; after forgetting

Each writes <out>/<experiment>.json and .md (and .png for curves). --data takes a CounterFact
file (ROME or EasyEdit format), a zsRE (MEND) file, or synthetic[:N] (the demo model's domain).
--workers N spreads the cases over N Ray tasks, each loading the model (same numbers as
--workers 0 for the same seed). As a Ray job, where ../shared is not beside the working dir:

    LARIMAR_DATA_DIR=/abs/shared/data ray job submit --working-dir . -- \
        python jobs/eval.py counterfact --model /abs/model --data ../shared/data/counterfact/dev_canonical_100.json \
        --workers 4 --out /abs/runs/eval
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from larimar.cli import config_error
from larimar.config import ConfigError, apply_overrides, from_dict
from larimar.evaluation.config import EXPERIMENTS, EvalConfig

# Flags whose spelling is not the field's name (kept from the first release of the command).
NEGATED = {"use_subjects": "--no-subjects", "progress": "--no-progress"}  # booleans that default to true
ALIASES = {"editor_options": "--editor-opt"}


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _optional(text: str) -> str | None:
    return None if text.lower() == "none" else text


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """One flag per EvalConfig field, typed from its annotation; defaults stay EvalConfig's."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    hints = typing.get_type_hints(EvalConfig)
    for f in dataclasses.fields(EvalConfig):
        if f.name == "experiment":
            continue
        tp, text = hints[f.name], f.metadata.get("help", "")
        default = "" if f.default is dataclasses.MISSING else f" (default: {f.default})"
        flag = ALIASES.get(f.name, "--" + f.name.replace("_", "-"))
        if f.name in NEGATED:
            p.add_argument(NEGATED[f.name], dest=f.name, action="store_false", help=f"do not: {text}")
        elif tp is bool:
            p.add_argument(flag, dest=f.name, action="store_true", help=text)
        elif typing.get_origin(tp) is list and typing.get_args(tp) == (int,):
            p.add_argument(flag, dest=f.name, type=_int_list, metavar="N,N,...", help=text)
        elif typing.get_origin(tp) is list:
            p.add_argument(flag, dest=f.name, action="append", metavar="KEY=VALUE", help=f"{text} (repeatable)")
        else:
            args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            conv = {int: int, float: float}.get(args[0], _optional if type(None) in typing.get_args(tp) else str)
            p.add_argument(
                flag,
                dest=f.name,
                type=conv,
                required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                help=text + default,
            )
    p.add_argument("overrides", nargs="*", default=[], help="key=value settings of the same fields, e.g. eval_cap=64")
    return p


def parse_args(argv: list[str] | None, prog: str | None = None) -> EvalConfig:
    p = build_parser(prog)
    a = vars(p.parse_intermixed_args(argv))
    overrides = a.pop("overrides", [])
    try:
        return from_dict(EvalConfig, apply_overrides(a, overrides))
    except ConfigError as err:
        p.error(str(err))


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    cfg = parse_args(argv, prog)
    from larimar.evaluation.runner import run

    try:
        rep, paths = run(cfg)
    except ConfigError as err:
        config_error(err)
    print(rep.table)
    for note in rep.notes:
        print(f"- {note}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return {"summary": rep.summary, "paths": {k: str(v) for k, v in paths.items()}}
