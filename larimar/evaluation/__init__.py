"""Evaluation of Larimar against the paper's claims (Das et al., ICML 2024), one module per experiment.

    metrics      ES/PS/NS, probability gaps, token accuracy, locality, percentiles (on plain numbers)
    forcing      teacher-forced NLL and argmax of answers under memory read-outs
    counterfact  Table 2 / 8: single-fact editing, with and without scope, and the unedited decoder
    zsre         Table 12: token accuracy on edit, rephrase and locality prompts
    sequential   Table 3 / Fig. 2b: retention and held-out rephrase recall over sequential edits
    forgetting   Table 4: recall of a forgotten fact and of the retained ones
    capacity     Fig. 2a / 4: recall vs facts written for several memory sizes
    long_context Table 6: hierarchical memories over a long document of facts
    timing       Table 1: per-edit wall time (encode / write / read), apart from scoring
    config       EvalConfig (the run's settings) and the experiment names
    context      EvalContext (model + editor per process)
    runner       item lists, single-process or Ray execution, and the reports
    report       JSON / Markdown / PNG output
    bench        the speed / accuracy benchmark of Larimar against the baselines (jobs/bench_edit.py)
    easyedit     EasyEdit's BaseEditor interface on a Larimar model
    curves       learning curves over a run's checkpoints

The benchmark readers (CounterFact, zsRE, synthetic facts) are core: `larimar.benchmarks`.

Command line: ``python jobs/eval.py <experiment> --model DIR --data PATH --out DIR``.
"""

from __future__ import annotations

from larimar import lazy_exports

# Loaded on first use: a submodule (larimar.evaluation.forcing, say) must not drag in the runner
# and, through it, every experiment and baseline.
_EXPORTS = {
    "EvalConfig": "larimar.evaluation.config",
    "EvalContext": "larimar.evaluation.context",
    "EXPERIMENTS": "larimar.evaluation.config",
    "run": "larimar.evaluation.runner",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
