"""Would a memory read-out in decoder space close the zsRE gap? (README "Larimar-smol v2", issue 14.)

Untrained, on the shipped model's frozen parts: each zsRE fact "prompt target" is stored with
v2's key (the prompt's latent) and, as its value, SmolLM2's input embeddings of the fact's first
L tokens (flattened). N facts share one least-squares memory (`larimar.memory.keyed_read`, the
ridge read the keyed training episodes use); each fact is read back with its *rephrase*'s latent,
rescaled to the value norm (the v2 read-out convention), and the read-out's rows go in front of
the question as input embeddings inside IKE's template ("New Fact: <read-out>\\nPrompt:
<question>"). The answer is teacher-forced (token accuracy, exact match), as `jobs/eval.py zsre`.
N = 1 is the in-context bound; larger N shows what the other facts' blend costs.

    python jobs/diagnostics/decoder_space_readout.py      # writes runs/diag/decoder_space_readout.json
"""

import json
from pathlib import Path

import torch

from larimar.benchmarks import load_zsre
from larimar.continuations import continuation_ids
from larimar.evaluation import metrics
from larimar.memory import keyed_read
from larimar.model import LarimarModel

L = 24  # fact tokens kept in a value (zsRE facts are shorter)
torch.set_num_threads(2)
m = LarimarModel.from_pretrained("larimar-smol-v2")
tok, lm = m.decoder_tokenizer, m.decoder.lm
emb = lm.get_input_embeddings()
cases = load_zsre("../shared/data/zsre/dev_eval_300.json", 100)
ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731


@torch.no_grad()
def values_of(facts: list[str]) -> tuple[torch.Tensor, list[int]]:
    out, lengths = torch.zeros(len(facts), L * emb.embedding_dim), []
    for i, text in enumerate(facts):
        t = ids(" " + text)[:L]  # as "New Fact: {fact}" tokenizes it
        out[i, : len(t) * emb.embedding_dim] = emb(torch.tensor(t)).flatten()
        lengths.append(len(t))
    return out, lengths


@torch.no_grad()
def answer_accuracy(prefix: torch.Tensor, question: str, answer: str) -> tuple[float, bool]:
    """Teacher-forced argmax accuracy of `answer` after <bos> New Fact: <prefix> \\n Prompt: <question>."""
    head = emb(torch.tensor([m.bos_id, *ids("New Fact:")]))
    tail_ids = ids("\nPrompt: " + question)
    a_ids = continuation_ids(tok, answer)
    tail = emb(torch.tensor(tail_ids + a_ids))
    x = torch.cat([head, prefix, tail]).unsqueeze(0)
    logits = lm(inputs_embeds=x).logits[0]
    start = head.shape[0] + prefix.shape[0] + len(tail_ids)  # first answer position
    pred = logits[start - 1 : start - 1 + len(a_ids)].argmax(-1).tolist()
    return metrics.token_accuracy(pred, a_ids), metrics.exact_match(pred, a_ids)


facts = [f"{c.prompt} {c.target}" for c in cases]
values, lengths = values_of(facts)
with torch.no_grad():
    keys = m.latents_from_pooled(m.encode_pooled([c.prompt for c in cases])).double()
    queries = {
        w: m.latents_from_pooled(m.encode_pooled([getattr(c, w) for c in cases])).double()
        for w in ("prompt", "rephrase")
    }
results = {}
for n in (1, 10, 100):
    row = {}
    for which, q in queries.items():
        accs, exact = [], []
        for s in range(0, len(cases), n):
            sl = slice(s, s + n)
            v = values[sl].double()
            read = keyed_read(keys[sl].unsqueeze(0), v.unsqueeze(0), q[sl].unsqueeze(0), 1e-3)[0]
            read = read * (v.norm(dim=-1, keepdim=True) / read.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            for j in range(read.shape[0]):
                i = s + j
                prefix = read[j].float().view(L, -1)[: lengths[i]]  # the matched fact's length (scope metadata)
                a, e = answer_accuracy(prefix, getattr(cases[i], which), cases[i].target)
                accs.append(a)
                exact.append(float(e))
        row[which] = {"token_acc": metrics.mean(accs), "exact": metrics.mean(exact)}
    results[f"N={n}"] = row
    print(n, row, flush=True)
Path("runs/diag").mkdir(parents=True, exist_ok=True)
Path("runs/diag/decoder_space_readout.json").write_text(json.dumps(results, indent=1))
