"""Evaluation of Larimar against the paper's claims (Das et al., ICML 2024), one module per experiment.

    data         CounterFact (ROME and EasyEdit formats), zsRE (MEND format), synthetic facts
    metrics      ES/PS/NS, probability gaps, token accuracy, locality, percentiles (on plain numbers)
    forcing      teacher-forced NLL and argmax of answers under memory read-outs
    counterfact  Table 2 / 8: single-fact editing, with and without scope, and the unedited decoder
    zsre         Table 12: token accuracy on edit, rephrase and locality prompts
    sequential   Table 3 / Fig. 2b: retention and held-out rephrase recall over sequential edits
    forgetting   Table 4: recall of a forgotten fact and of the retained ones
    capacity     Fig. 2a / 4: recall vs facts written for several memory sizes
    long_context Table 6: hierarchical memories over a long document of facts
    timing       Table 1: per-edit wall time (encode / write / read), apart from scoring
    context      EvalConfig (the run's settings) and EvalContext (model + editor per process)
    runner       item lists, single-process or Ray execution, and the reports
    report       JSON / Markdown / PNG output

Command line: ``python jobs/eval.py <experiment> --model DIR --data PATH --out DIR``.
"""

from larimar.evaluation.context import EvalConfig, EvalContext
from larimar.evaluation.runner import EXPERIMENTS, run

__all__ = ["EXPERIMENTS", "EvalConfig", "EvalContext", "run"]
