#!/bin/bash
# Issue 14 (session 6): 300 more steps from the shipped larimar-smol-v2 per variant, same data and seed,
# then the first 100 zsRE and first 50 CounterFact dev cases; jobs/diagnostics/ablation50.py tabulates.
#   bash jobs/diagnostics/ablate_from_v2.sh            # ~25 min per variant on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
D=../shared/data
mkdir -p runs/abl
run() { # name overrides...
  name=$1; shift
  $PY jobs/train.py --config larimar-smol-v2 optim.steps=300 run.name=abl-$name run.keep_checkpoints=1 \
    run.checkpoint_every=100 run.init_from=larimar-smol-v2 "$@" > runs/abl/train-$name.log 2>&1
  nice -n 5 $PY jobs/eval.py --no-progress zsre --model runs/abl-$name/model --data $D/zsre/dev_eval_300.json \
    --limit 100 --out runs/abl/$name-zsre > runs/abl/$name-zsre.log 2>&1
  nice -n 5 $PY jobs/eval.py --no-progress counterfact --model runs/abl-$name/model \
    --data $D/counterfact/dev_canonical_100.json --limit 50 --out runs/abl/$name-cf > runs/abl/$name-cf.log 2>&1
}
run v2cont
run slots4 model.conditioning_slots=4
run tokens model.value_target_tokens=true
