"""Linear probe (README "Larimar-smol v2"): is the target's first decoder token recoverable from frozen
MiniLM pooled outputs of the prompt, the fact and the target alone? Writes runs/diag/probe.json.

    python jobs/diagnostics/probe.py
"""

import json, torch, time
from pathlib import Path
from larimar.train.fact_corpus import edit_records
from larimar.model import LarimarModel

torch.set_num_threads(1)
D = Path("../shared/data")
ex = [D / "counterfact/dev_canonical_100.json", D / "zsre/dev_eval_300.json"]
train = edit_records([D / "counterfact/dev_flat.json", D / "zsre/train_1k.json"], ex)[:12000]
test = edit_records([D / "counterfact/dev_canonical_100.json"]) + edit_records([D / "zsre/dev_eval_300.json"])
m = LarimarModel.from_pretrained("larimar-smol-facts")
tok = m.decoder_tokenizer
first = lambda t: tok(" " + t, add_special_tokens=False)["input_ids"][0]


def feats(edits, kind):
    texts = [
        f"{e['prompt']} {e['target']}" if kind == "fact" else e["target"] if kind == "target" else e["prompt"]
        for e in edits
    ]
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            out.append(m.encode_pooled(texts[i : i + 256]))
    return torch.cat(out)


ytr = torch.tensor([first(e["target"]) for e in train])
yte = torch.tensor([first(e["target"]) for e in test])
classes = sorted(set(ytr.tolist()))
idx = {c: i for i, c in enumerate(classes)}
ytr_c = torch.tensor([idx[int(y)] for y in ytr])
keep = torch.tensor([int(y) in idx for y in yte])
yte_c = torch.tensor([idx.get(int(y), 0) for y in yte])
res = {"train": len(train), "test": len(test), "test_label_seen": float(keep.float().mean()), "classes": len(classes)}
for kind in ("prompt", "fact", "target"):
    t0 = time.time()
    Xtr, Xte = feats(train, kind), feats(test, kind)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    W = torch.zeros(Xtr.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for ep in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Xtr @ W + b, ytr_c) + 1e-4 * (W**2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc_tr = float(((Xtr @ W + b).argmax(1) == ytr_c).float().mean())
        pred = (Xte @ W + b).argmax(1)
        acc_te = float(((pred == yte_c) & keep).float().sum() / keep.sum())
    res[kind] = {"train_acc": acc_tr, "test_acc_on_seen_labels": acc_te, "seconds": time.time() - t0}
    print(kind, res[kind], flush=True)
print(json.dumps(res, indent=1))
Path("runs/diag").mkdir(parents=True, exist_ok=True)
Path("runs/diag/probe.json").write_text(json.dumps(res, indent=1))
