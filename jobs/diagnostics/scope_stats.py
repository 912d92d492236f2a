"""Scope-detector diagnostic: in-scope rates of paraphrase and neighbourhood prompts under cosine
thresholds and the subject rule (README "Larimar-smol v2").

    python jobs/diagnostics/scope_stats.py ../shared/data/paraphrase/counterfact_canonical_train.json
"""

import json, sys, numpy as np
from larimar.scope import ScopeDetector, load_embedder, query_sentences

emb = load_embedder("minilm-l6")
path = sys.argv[1]
cases = json.load(open(path))
sd = ScopeDetector(emb, 0.7)


def e(t):
    return sd.embed(t)


rows = []
P_sim, N_sim, P_sub, N_sub, P_simsub, N_simsub = [], [], [], [], [], []
for c in cases:
    rw = c["requested_rewrite"]
    subj = rw["subject"]
    prompt = rw["prompt"].format(subj)
    text = prompt + " " + rw["target_new"]["str"]
    keys = e([prompt, text])  # the current index: prompt and full text
    skey = e([subj])

    def sims(qs):
        sents, owners = query_sentences(qs)
        v = e(sents)
        s = (v @ keys.T).max(1).values
        ss = (v @ skey.T).max(1).values
        out = [-1] * len(qs)
        outs = [-1] * len(qs)
        for i, o in enumerate(owners):
            out[o] = max(out[o], float(s[i]))
            outs[o] = max(outs[o], float(ss[i]))
        return out, outs

    ps, pss = sims(c["paraphrase_prompts"])
    ns, nss = sims(c["neighborhood_prompts"])
    P_sim += ps
    N_sim += ns
    P_simsub += pss
    N_simsub += nss
    low = lambda q: subj.lower() in q.lower()
    P_sub += [low(q) for q in c["paraphrase_prompts"]]
    N_sub += [low(q) for q in c["neighborhood_prompts"]]
P_sim, N_sim, P_sub, N_sub = map(np.array, (P_sim, N_sim, P_sub, N_sub))
P_simsub, N_simsub = np.array(P_simsub), np.array(N_simsub)
print(path, len(cases), "paraphrases", len(P_sim), "neighbours", len(N_sim))
for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75):
    print(f"cos>={t}: para in {np.mean(P_sim >= t):.3f}  neigh in {np.mean(N_sim >= t):.4f}")
print(f"subject string present: para {P_sub.mean():.3f} neigh {N_sub.mean():.4f}")
for t in (0.3, 0.4, 0.5, 0.6):
    print(
        f"subject present & cos>={t}: para {np.mean(P_sub & (P_sim >= t)):.3f} neigh {np.mean(N_sub & (N_sim >= t)):.4f}"
    )
for t in (0.5, 0.6, 0.7, 0.8):
    print(f"cos(query sentence, subject)>={t}: para {np.mean(P_simsub >= t):.3f} neigh {np.mean(N_simsub >= t):.4f}")
