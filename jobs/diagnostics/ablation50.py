"""The README's ablation tables: CounterFact scope-on scores of the first 50 dev cases of each run in
runs/ablate/<name>/counterfact.json (jobs/eval.py counterfact ... --out runs/ablate/<name>).

    python jobs/diagnostics/ablation50.py
"""

import json
from pathlib import Path
from larimar.evaluation.counterfact import condition_summary

rows = [
    ("v1-raw-nosubj", "larimar-smol-facts as shipped: raw read-out, cosine 0.7 (the v1 setting)"),
    ("v1-norm-nosubj", "v1 + value_norm read-out (inference only)"),
    ("v1-raw-subj", "v1 + subject rule (inference only)"),
    ("v1-norm-subj", "v1 + value_norm + subject rule"),
    ("v2-cf-nosubj", "v2 (trained: keyed objective + value_target + value_norm), cosine 0.7, no subject rule"),
    ("v2-cf-raw", "v2 with the raw read-out (+ subject rule)"),
    ("v2-cf", "**v2 as shipped** (value_norm + subject rule)"),
]
print("| variant | ES | PS | PS (paper) | NS | Score | PS in scope | NS in scope |\n|---|---|---|---|---|---|---|---|")
f = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
for name, label in rows:
    p = Path(f"runs/ablate/{name}/counterfact.json")
    if not p.exists():
        print(f"| {label} | not run | | | | | | |")
        continue
    recs = json.loads(p.read_text())["records"][:50]
    s = condition_summary(recs, "scope")
    print(
        f"| {label} | {f(s['ES'])} | {f(s['PS'])} | {f(s['PS_ref'])} | {f(s['NS'])} | {f(s['Score'])} | {s['PS_in_scope']:.2f} | {s['NS_in_scope']:.3f} |"
    )
recs = json.loads(Path("runs/ablate/v2-cf/counterfact.json").read_text())["records"][:50]
s = condition_summary(recs, "unedited")
print(
    f"| unedited SmolLM2 (z = 0) | {f(s['ES'])} | {f(s['PS'])} | {f(s['PS_ref'])} | {f(s['NS'])} | {f(s['Score'])} | | |"
)

# Training-time ablations (runs/abl/queue.sh, queue2.sh): each variant fine-tuned 300 steps from
# larimar-smol-facts on the v2 data, first 50 CounterFact canonical cases and first 100 zsRE dev cases.
print(
    "\n| trained variant (300 steps) | ES | PS | PS (paper) | NS | Score | zsRE edit | zsRE rephrase |\n|---|---|---|---|---|---|---|---|"
)
for name, label in [
    ("objective", "keyed objective alone (raw read-out, no target head)"),
    ("objective-vt", "objective + value_target (raw read-out)"),
    ("full", "objective + value_target + value_norm (the v2 recipe)"),
]:
    cf, zs = Path(f"runs/abl/{name}-cf/counterfact.json"), Path(f"runs/abl/{name}-zsre/zsre.json")
    if not (cf.exists() and zs.exists()):
        print(f"| {label} | not run | | | | | | |")
        continue
    s = condition_summary(json.loads(cf.read_text())["records"][:50], "scope")
    z = json.loads(zs.read_text())["summary"]["scope"]
    print(
        f"| {label} | {f(s['ES'])} | {f(s['PS'])} | {f(s['PS_ref'])} | {f(s['NS'])} | {f(s['Score'])} | {f(z['ES'])} | {f(z['PS'])} |"
    )

# Capacity and token identity, fine-tuned from the shipped v2 (runs/abl/queue3.sh, queue4.sh): 300
# more steps each on the same data and seed, against 300 more steps of v2 itself (the control).
print(
    "\n| from v2, 300 more steps | ES | PS | PS (paper) | NS | Score | zsRE edit | zsRE rephrase | zsRE exact | rephrase exact |"
)
print("|---|---|---|---|---|---|---|---|---|---|")
for name, label in [
    ("v2cont", "v2 recipe continued (control)"),
    ("slots4", "4 key/value slots per layer (model.conditioning_slots=4)"),
    ("tokens", "target token embeddings in the value (model.value_target_tokens)"),
]:
    cf, zs = Path(f"runs/abl/{name}-cf/counterfact.json"), Path(f"runs/abl/{name}-zsre/zsre.json")
    if not (cf.exists() and zs.exists()):
        print(f"| {label} | not run | | | | | | | | |")
        continue
    s = condition_summary(json.loads(cf.read_text())["records"][:50], "scope")
    z = json.loads(zs.read_text())["summary"]["scope"]
    print(
        f"| {label} | {f(s['ES'])} | {f(s['PS'])} | {f(s['PS_ref'])} | {f(s['NS'])} | {f(s['Score'])} | "
        f"{f(z['ES'])} | {f(z['PS'])} | {f(z['ES_exact'])} | {f(z['PS_exact'])} |"
    )
