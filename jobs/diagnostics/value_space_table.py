"""The README's value-space table (issue 14): zsRE (first 40 dev cases) and CounterFact (first 50)
scope-on scores of the variants `jobs/diagnostics/value_space_ablation.sh` derives from v2 and
evaluates into runs/eval/<name>/. v2 itself: runs/curves/larimar-smol-v2/step_1400 (the shipped
checkpoint) and runs/ablate/v2-cf.

    python jobs/diagnostics/value_space_table.py
"""

import json
from pathlib import Path

from larimar.evaluation.counterfact import condition_summary

ROWS = [
    ("v2", "latent", "(the latent slot)", 1.0),
    ("v3-decoder", "decoder", "New Fact:{value}\\n", None),
    ("v3-D", "decoder", "New Fact:{value}.\\n", None),
    ("v3-C", "decoder", "{value}\\n", None),
    ("v3-B", "decoder", "New Fact:{value}\\nPrompt: (IKE's)", None),
    ("v3-E", "decoder", "one demonstration + IKE's", None),
    ("v3h-C", "latent+decoder", "{value}\\n", 1.0),
    ("v3h-B", "latent+decoder", "IKE's", 1.0),
    ("v3h-E", "latent+decoder", "one demonstration + IKE's", 1.0),
    ("v3h-B05", "latent+decoder", "IKE's", 0.5),
    ("v3h-B03", "latent+decoder", "IKE's", 0.3),
    ("v3h-E03", "latent+decoder", "one demonstration + IKE's", 0.3),
    ("v3h-E05", "latent+decoder", "one demonstration + IKE's", 0.5),
    ("v3 at 0.75 (shipped before)", "latent+decoder", "IKE's", 0.75),
    ("v3 (shipped)", "latent+decoder", "one demonstration + IKE's", 0.5),
]
PATHS = {
    "v2": ("runs/curves/larimar-smol-v2/step_1400/zsre.json", "runs/ablate/v2-cf/counterfact.json"),
    # the shipped model's full runs (larimar eval ... --model larimar-smol-v3 --out runs/eval/v3d/<experiment>),
    # and those of its previous setting (IKE's template, slot 0.75)
    "v3 at 0.75 (shipped before)": ("runs/eval/v3s75/zsre/zsre.json", "runs/eval/v3s75/counterfact/counterfact.json"),
    "v3 (shipped)": ("runs/eval/v3d/zsre/zsre.json", "runs/eval/v3d/counterfact/counterfact.json"),
}
f = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
print("| variant | values | template | latent scale | zsRE edit / rephrase | exact | CF ES / PS / NS |")
print("|---|---|---|---|---|---|---|")
for name, space, template, scale in ROWS:
    zs, cf = PATHS.get(name, (f"runs/eval/{name}/zsre.json", f"runs/eval/{name}/counterfact.json"))
    z = json.loads(Path(zs).read_text())["records"][:40] if Path(zs).exists() else None
    if z is None:
        continue
    mean = lambda k: sum(float(r["scope"][k]) for r in z) / len(z)  # noqa: E731
    cf_cell = "not run"
    if Path(cf).exists():
        s = condition_summary(json.loads(Path(cf).read_text())["records"][:50], "scope")
        cf_cell = f"{f(s['ES'])} / {f(s['PS'])} / {f(s['NS'])}"
    print(
        f"| {name} | {space} | {template} | {scale if scale is not None else '-'} | "
        f"{f(mean('ES'))} / {f(mean('PS'))} | {f(mean('ES_exact'))} / {f(mean('PS_exact'))} | {cf_cell} |"
    )
