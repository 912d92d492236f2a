# Where memory values live and how they are read back (README "Larimar-smol v3", issue 14): every
# variant is derived from the shipped v2 without training (larimar derive), then scored on the first
# 40 zsRE and the first 50 CounterFact dev cases, subject rule on. ~1.5 + 6 min per variant on 2
# cores. The table: python jobs/diagnostics/value_space_table.py
set -e
D=../shared/data
derive() { larimar derive --from larimar-smol-v2 --out "runs/$1" readout=value_norm "${@:2}"; }
ike='value_template="New Fact:{value}\nPrompt:"'
demo='value_template="New Fact: The Colosseum is in the city of Toronto.\nPrompt: Where is the Colosseum? It is in the city of Toronto.\nNew Fact:{value}\nPrompt:"'
derive v3-decoder value_space=decoder value_target=false 'value_template="New Fact:{value}\n"'
derive v3-B value_space=decoder value_target=false "$ike"
derive v3-C value_space=decoder value_target=false 'value_template="{value}\n"'
derive v3-D value_space=decoder value_target=false 'value_template="New Fact:{value}.\n"'
derive v3-E value_space=decoder value_target=false "$demo"
derive v3h-B value_space=latent+decoder "$ike"
derive v3h-C value_space=latent+decoder 'value_template="{value}\n"'
derive v3h-B05 value_space=latent+decoder value_latent_scale=0.5 "$ike"
derive v3h-E value_space=latent+decoder "$demo"
derive v3h-E05 value_space=latent+decoder value_latent_scale=0.5 "$demo"
derive v3h-E03 value_space=latent+decoder value_latent_scale=0.3 "$demo"
derive v3h-B03 value_space=latent+decoder value_latent_scale=0.3 "$ike"
for m in v3-decoder v3-B v3-C v3-D v3-E v3h-B v3h-C v3h-B05 v3h-E v3h-E05 v3h-E03 v3h-B03; do
  nice larimar eval zsre --model "runs/$m" --data $D/zsre/dev_eval_300.json --limit 40 --out "runs/eval/$m"
done
for m in v3-decoder v3-B v3-C v3-E v3h-B v3h-B05 v3h-E05 v3h-E03; do
  nice larimar eval counterfact --model "runs/$m" --data $D/counterfact/dev_canonical_100.json --limit 50 --out "runs/eval/$m"
done
