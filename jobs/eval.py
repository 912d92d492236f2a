"""Evaluate a trained Larimar against the paper's claims, one experiment per command.

    python jobs/eval.py <experiment> --model DIR --data PATH [--limit N] [--seed S] --out DIR [--workers N]

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
import sys

from larimar.config import ConfigError
from larimar.evaluation import EXPERIMENTS, EvalConfig, run


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: list[str] | None) -> EvalConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--model", required=True, help="saved model directory (or a jobs/configs name: untrained)")
    p.add_argument("--data", required=True, help="benchmark JSON (CounterFact or zsRE) or synthetic[:N]")
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--limit", type=int, help="first N records of --data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="0: single process; N: N Ray tasks")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--slots", type=int, help="memory size K (default: the model's)")
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--memory-keys", default="linear", choices=["linear", "relu"],
                   help="memory addressing: linear (the paper; at most C facts kept apart) or relu random features (K)")
    p.add_argument("--scope-model", default="minilm-l6", help="scope embedder; 'none' disables the detector")
    p.add_argument("--scope-threshold", type=float, default=0.7, help="cosine similarity for 'in scope'")
    p.add_argument("--subject-threshold", type=float, default=0.3,
                   help="cosine a query that names an edit's subject needs to be in scope")
    p.add_argument("--no-subjects", action="store_true",
                   help="edit without the cases' subjects (the scope detector then uses --scope-threshold only)")
    p.add_argument("--readout", choices=["raw", "value_norm"],
                   help="override the model's read-out convention (default: the one it was trained with)")
    p.add_argument("--use-scope", action="store_true", help="memory experiments: gate reads with the scope detector")
    p.add_argument("--checkpoints", type=int, default=10, help="sequential: evaluation points")
    p.add_argument("--sizes", type=_int_list, default=[], help="N values (capacity, forgetting) or fact counts (long-context)")
    p.add_argument("--slots-list", type=_int_list, default=[], help="capacity: K values")
    p.add_argument("--trials", type=int, default=10, help="forgetting: facts forgotten per N")
    p.add_argument("--segment-facts", type=int, default=16, help="long-context: facts per segment memory")
    p.add_argument("--eval-cap", type=int, default=256, help="most facts whose recall is measured per point")
    p.add_argument("--repeats", type=int, default=1, help="timing: passes over the cases")
    p.add_argument("--editor", default="larimar",
                   help="larimar, or a peer baseline on the model's decoder: ft-l, ike, rome, grace "
                        "(counterfact, zsre, sequential)")
    p.add_argument("--editor-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a baseline setting, e.g. layer=5 (repeatable; see larimar/baselines/<name>.py)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        return EvalConfig(
            experiment=a.experiment, model=a.model, data=a.data, out=a.out, limit=a.limit, seed=a.seed,
            workers=a.workers, batch_size=a.batch_size, slots=a.slots, ridge=a.ridge, memory_keys=a.memory_keys,
            scope_model=None if a.scope_model.lower() == "none" else a.scope_model, scope_threshold=a.scope_threshold,
            subject_threshold=a.subject_threshold, use_subjects=not a.no_subjects, readout=a.readout,
            use_scope=a.use_scope, checkpoints=a.checkpoints, sizes=a.sizes, slots_list=a.slots_list, trials=a.trials,
            segment_facts=a.segment_facts, eval_cap=a.eval_cap, repeats=a.repeats, progress=not a.no_progress,
            editor=a.editor, editor_options=a.editor_opt)
    except ConfigError as err:
        p.error(str(err))


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    try:
        rep, paths = run(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(rep.table)
    for note in rep.notes:
        print(f"- {note}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return {"summary": rep.summary, "paths": {k: str(v) for k, v in paths.items()}}


if __name__ == "__main__":
    main()
