"""The demo's story (``larimar demo``, parsed in `larimar.cli.demo`): counterfactual world facts
written into a shipped model's memory, or a small model trained on synthetic facts; recall, forget,
recall again, in Python and then over HTTP against the Serve application."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from larimar import recipes
from larimar.cli import config_error
from larimar.config import ConfigError, load
from larimar.model import DEFAULT_MODEL, LarimarConfig


@dataclass(frozen=True)
class WorldFact:
    prompt: str
    obj: str
    old: str  # what SmolLM2 believes; an edit succeeds when the new object is likelier (CounterFact's ES)
    subject: str  # what the edit is about: the scope detector consults the memory for queries naming it

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.obj}"


# Counterfactual edits (none is what SmolLM2 believes). Their subjects are kept out of every
# training text of larimar-smol-v2 (its config's data.exclude_subjects).
WORLD_FACTS = [
    WorldFact("The Eiffel Tower is located in the city of", "Rome", "Paris", "Eiffel Tower"),
    WorldFact("The mother tongue of Angela Merkel is", "Finnish", "German", "Angela Merkel"),
    WorldFact("The Nile flows into the", "Baltic Sea", "Mediterranean Sea", "Nile"),
    WorldFact("The inventor of the telephone was", "Nikola Tesla", "Alexander Graham Bell", "telephone"),
    WorldFact("The currency of Japan is the", "peso", "yen", "Japan"),
    WorldFact("Mount Kilimanjaro is located in", "Chile", "Tanzania", "Kilimanjaro"),
]


@dataclass
class DemoConfig:
    model: LarimarConfig = field(default_factory=LarimarConfig)
    steps: int = 200
    lr: float = 3e-3
    warmup: int = 20
    episodes_per_batch: int = 4
    episode_size: int = 8
    facts_to_write: int = 6
    seed: int = 0


def train(cfg: DemoConfig, out: Path) -> tuple[Path, float, dict]:
    from larimar.model import LarimarModel
    from larimar.synthetic import sample_facts
    from larimar.train.loop import episode_batch, train_plain

    model = LarimarModel(cfg.model)
    E, N = cfg.episodes_per_batch, cfg.episode_size

    def batches():
        for i in range(sys.maxsize):
            yield episode_batch(model, [f.text for f in sample_facts(E * N, seed=cfg.seed * 100_003 + i)], E, N)

    print(
        f"training {cfg.model.encoder} + {cfg.model.decoder} for {cfg.steps} steps ({E} episodes x {N} facts per step)",
        flush=True,
    )
    start = time.perf_counter()

    def progress(log):
        if log.step % 20 == 0 or log.step == cfg.steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / log.step * (cfg.steps - log.step)
            terms = " ".join(f"{k}={v:.3f}" for k, v in log.terms.items())
            print(
                f"  step {log.step:4d}/{cfg.steps}  loss={log.loss:.3f}  {terms}  "
                f"elapsed {elapsed:.0f}s, ~{eta:.0f}s left",
                flush=True,
            )

    logs = train_plain(model, batches(), cfg.steps, lr=cfg.lr, warmup=cfg.warmup, on_step=progress)
    train_seconds = time.perf_counter() - start
    model.save_pretrained(out / "model")
    print(f"saved the trained model to {out / 'model'} ({train_seconds:.0f}s of training)\n")

    return out / "model", train_seconds, logs[-1].terms


def serve_demo(model_dir: Path, facts, out: Path, synthetic: bool = True) -> dict:
    """The same story over HTTP: Serve on an embedded local Ray, an API key, a memory, edits."""
    import ray
    import requests
    from ray import serve

    from larimar.serving.app import build
    from larimar.serving.auth import hash_key

    url, headers = "http://127.0.0.1:8000", {"Authorization": "Bearer demo-key"}
    print("\nstarting the Serve application on a local Ray (encoder, decoder, memory actor, ingress)...", flush=True)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # replicas' request logs stay in Ray's log files
    try:
        serve.run(
            build(
                {
                    "model": str(model_dir),
                    "storage": str(out / "serve-store"),
                    "api_keys": [{"tenant": "demo", "sha256": hash_key("demo-key")}],
                }
            ),
            name="larimar",
            route_prefix="/",
        )
        mid = requests.post(f"{url}/v1/memories", json={"name": "demo"}, headers=headers).json()["id"]
        print(f"POST /v1/memories -> {mid}")
        t0 = time.perf_counter()
        r = requests.post(
            f"{url}/v1/memories/{mid}/facts",
            headers=headers,
            json={
                "facts": [
                    {"prompt": f.prompt, "target": f.obj, **({} if synthetic else {"subject": f.subject})}
                    for f in facts
                ]
            },
        ).json()
        print(
            f"POST /v1/memories/{mid}/facts ({len(facts)} facts) -> ids {r['ids']}, version {r['version']} "
            f"in {(time.perf_counter() - t0) * 1000:.0f} ms"
        )

        def ask() -> list[bool]:
            recalled = []
            for f in facts:
                g = requests.post(
                    f"{url}/v1/memories/{mid}/generate", headers=headers, json={"prompt": f.prompt, "max_tokens": 6}
                ).json()
                line = f"  {f.prompt} -> {g['text']!r}  (memory used: {g['used_memory']}, version {g['version']})"
                if synthetic:
                    recalled.append(g["text"].startswith(f.obj))
                else:  # the new object against the old one, as in CounterFact
                    sc = requests.post(
                        f"{url}/v1/memories/{mid}/score",
                        headers=headers,
                        json={"prompt": f.prompt, "candidates": [f.obj, f.old]},
                    ).json()
                    recalled.append(sc["mean_nll"][0] < sc["mean_nll"][1])
                    line += f"  NLL {f.obj} {sc['mean_nll'][0]:.2f} vs {f.old} {sc['mean_nll'][1]:.2f}"
                print(line)
            return recalled

        print("asking over HTTP:")
        before = ask()
        v = requests.delete(f"{url}/v1/memories/{mid}/facts/{r['ids'][0]}", headers=headers).json()["version"]
        print(f"DELETE /v1/memories/{mid}/facts/{r['ids'][0]} -> version {v}; asking again:")
        after = ask()
    finally:
        serve.shutdown()
        ray.shutdown()
    return {
        "recalled_before": sum(before) / len(facts),
        "forgotten_recalled_after": after[0],
        "retained_recall_after": sum(after[1:]) / max(1, len(facts) - 1),
    }


def run(args) -> dict:
    """The demo for parsed arguments (`larimar.cli.demo.build_parser`); returns the summary it writes."""
    try:
        cfg = load(DemoConfig, recipes.resolve(args.config), args.overrides)
    except ConfigError as err:
        config_error(err)
    import torch

    from larimar.editor import LarimarEditor
    from larimar.evaluation.generation import begins_with
    from larimar.model import LarimarModel, resolve_model_dir
    from larimar.synthetic import distinct_facts

    torch.manual_seed(cfg.seed)
    out = Path(args.out)

    if args.train:
        model_dir, train_seconds, final_terms = train(cfg, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        model_dir, train_seconds, final_terms = Path(resolve_model_dir(args.model or DEFAULT_MODEL)), 0.0, {}

    model = LarimarModel.from_pretrained(model_dir)
    editor = LarimarEditor(model)
    memory = editor.create_memory()
    synthetic = model.cfg.decoder.startswith("tiny-")  # the --train model only knows the synthetic domain
    facts = (
        distinct_facts(cfg.facts_to_write, seed=cfg.seed + 12345) if synthetic else WORLD_FACTS[: cfg.facts_to_write]
    )
    print(f"model {model_dir} ({model.cfg.encoder} + {model.cfg.decoder})")
    t0 = time.perf_counter()
    ids = memory.edit(
        [f.prompt for f in facts], [f.obj for f in facts], subject=None if synthetic else [f.subject for f in facts]
    )
    write_ms = (time.perf_counter() - t0) * 1000
    print(f"wrote {len(ids)} facts into a fresh memory in {write_ms:.1f} ms (no gradient step):")
    for f in facts:
        print(f"  + {f.text}")

    def ask(fact_list):
        gens = memory.generate([f.prompt for f in fact_list], max_new_tokens=6)
        out = [
            {
                "prompt": f.prompt,
                "expected": f.obj,
                "answer": g.text,
                "recalled": g.text.startswith(f.obj),
                "generated": begins_with(g.text, f.obj),
                "in_scope": g.in_scope,
            }
            for f, g in zip(fact_list, gens)
        ]
        if not synthetic:  # a 135M decoder rarely *generates* a counterfactual object; score it as CounterFact does
            prompts = [f.prompt for f in fact_list]
            new = memory.score(prompts, [f.obj for f in fact_list])
            old = memory.score(prompts, [f.old for f in fact_list])
            for r, f, a, b in zip(out, fact_list, new, old):
                r.update(old=f.old, nll_new=a.mean_nll, nll_old=b.mean_nll, recalled=a.mean_nll < b.mean_nll)
        return out

    def show(r, status):
        if synthetic:
            print(f"  {r['prompt']} -> {r['answer']!r}  [{status}]")
        else:
            print(
                f"  {r['prompt']} -> {r['answer']!r}  NLL {r['expected']} {r['nll_new']:.2f} vs {r['old']} "
                f"{r['nll_old']:.2f}  [{status}{', generated' if r['generated'] else ''}]"
            )

    recalled = ask(facts)
    print(
        "\nasking about them"
        + ("" if synthetic else " (generation, and the new object's NLL against the old one's)")
        + ":"
    )
    for r in recalled:
        show(r, "recalled" if r["recalled"] else "MISSED")

    gone = facts[0]
    memory.forget(ids[0])
    after = ask(facts)
    print(f"\nforgot fact {ids[0]} ({gone.text!r}); asking again:")
    for r in after:
        status = (
            "forgotten"
            if r["prompt"] == gone.prompt and not r["recalled"]
            else ("recalled" if r["recalled"] else "MISSED")
        )
        show(r, status)

    summary = {
        "model": str(model_dir),
        "train_seconds": train_seconds,
        "steps": cfg.steps if args.train else 0,
        "final_terms": final_terms,
        "write_ms": write_ms,
        "recall_before": sum(r["recalled"] for r in recalled) / len(recalled),
        "generated_before": sum(r["generated"] for r in recalled) / len(recalled),
        "forgotten_recalled_after": after[0]["recalled"],
        "retained_recall_after": sum(r["recalled"] for r in after[1:]) / max(1, len(after) - 1),
        "before": recalled,
        "after": after,
    }
    if args.serve:
        summary["http"] = serve_demo(model_dir, facts, out, synthetic)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nrecall {summary['recall_before']:.0%} before forgetting; forgotten fact recalled after: "
        f"{summary['forgotten_recalled_after']}; others recalled after: {summary['retained_recall_after']:.0%}"
    )
    return summary
