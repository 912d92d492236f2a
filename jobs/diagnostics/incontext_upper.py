"""What SmolLM2-135M answers with the fact in its context (README "Larimar-smol v2", the zsRE gap):
teacher-forced token accuracy on the first 100 zsRE dev cases with z = 0 and the fact "prompt
target" written in front of the question, for a few templates. It bounds what a memory whose
read-out gave the decoder the fact's own tokens could reach. Writes runs/diag/incontext_upper.json.

    python jobs/diagnostics/incontext_upper.py
"""

import json
from pathlib import Path

import torch
from larimar.model import LarimarModel
from larimar.benchmarks import load_zsre
from larimar.evaluation.forcing import teacher_force
from larimar.evaluation import metrics

torch.set_num_threads(1)
m = LarimarModel.from_pretrained("larimar-smol-v2")
cases = load_zsre("../shared/data/zsre/dev_eval_300.json", 100)
templates = {"none": "{q}", "fact_nl": "{fact}\n{q}", "fact_sp": "{fact}. {q}", "ike": "New Fact: {fact}\nPrompt: {q}"}
out = {}
for name, t in templates.items():
    res = {}
    for which in ("prompt", "rephrase"):
        prompts = [t.format(fact=f"{c.prompt} {c.target}", q=getattr(c, which)) for c in cases]
        answers = [c.target for c in cases]
        forced = []
        for s in range(0, len(prompts), 16):
            z = torch.zeros(len(prompts[s : s + 16]), m.cfg.memory.latent_dim)
            forced += teacher_force(m, prompts[s : s + 16], answers[s : s + 16], z)
        res[which] = (metrics.mean([f.token_acc for f in forced]), metrics.mean([float(f.exact) for f in forced]))
    out[name] = res
    print(name, res, flush=True)
Path("runs/diag").mkdir(parents=True, exist_ok=True)
Path("runs/diag/incontext_upper.json").write_text(json.dumps(out, indent=1))
