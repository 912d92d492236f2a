"""Edit speed against accuracy: Larimar and the peer baselines on the same cases, one table, one plot.

The check behind the paper's headline (Larimar Table 1: 1.1 s per edit vs ROME 4.8 s and GRACE
13.9 s on GPT-2): every method edits the same CounterFact cases (single edits, ES / PS / NS /
Score, ROME protocol, `larimar.evaluation.counterfact`) and the same zsRE stream (sequential
edits into one model or memory, retention and held-out rephrase recall,
`larimar.evaluation.sequential`). Baselines edit a plain decoder (by default SmolLM2-135M, the
decoder Larimar-smol is built on; with z = 0 Larimar's decoder is exactly that LM).

Timing: wall clock of the edit alone (Larimar: `EditableMemory.edit`, i.e. encoding the fact and
its key, the least-squares write and the scope index; a baseline: `Editor.edit`), never the
scoring; median and p90 over the CounterFact cases. One-time costs (ROME's key statistics and
context templates, IKE's retriever and demonstration pool, model loading) are reported apart.
Each method runs in its own process, so its peak resident memory (``ru_maxrss``) is its own:
reported in all and over the loaded model.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from larimar.evaluation import metrics
from larimar.evaluation.report import fmt, markdown_table

METHODS = ("larimar", "ft-l", "ike", "rome", "grace")


@dataclass
class BenchConfig:
    larimar_model: str  # a saved Larimar directory, or a recipe name (untrained; timing only)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    counterfact: str = "../shared/data/counterfact/dev_canonical_100.json"
    cases: int = 50
    zsre: str = "../shared/data/zsre/dev_eval_300.json"
    stream: int = 20  # zsRE facts edited one after another
    checkpoints: int = 2  # sequential evaluation points along the stream
    base: str = "smollm2-135m"  # decoder the baselines edit; "larimar" = the Larimar model's decoder
    options: dict[str, list[str]] = field(default_factory=dict)  # method -> key=value settings
    scope_model: str | None = "minilm-l6"
    scope_threshold: float = 0.7
    batch_size: int = 16
    seed: int = 0
    torch_threads: int = 0  # 0: torch's default
    out: str = "runs/bench_edit"

    def __post_init__(self) -> None:
        from larimar.baselines import EDITORS, editor_config
        from larimar.config import ConfigError

        unknown = [m for m in self.methods if m != "larimar" and m not in EDITORS]
        if unknown or not self.methods:
            raise ConfigError(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
        for m, opts in self.options.items():
            if m not in self.methods or m == "larimar":
                raise ConfigError(
                    f"--opt {m}: not a baseline being run ({[x for x in self.methods if x != 'larimar']})"
                )
            editor_config(m, opts)
        if self.cases < 1 or self.stream < 1 or self.checkpoints < 1:
            raise ConfigError("--cases, --stream and --checkpoints must be >= 1")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _times(seconds: list[float]) -> dict:
    return {
        "median_s": metrics.percentile(seconds, 50),
        "p90_s": metrics.percentile(seconds, 90),
        "mean_s": metrics.mean(seconds),
        "n": len(seconds),
    }


def _seq_summary(records: list[dict]) -> dict:
    last = records[-1]
    return {
        "edits": last["edits"],
        "retention": last["retention"],
        "rephrase": last["rephrase"],
        "curve": [{k: r[k] for k in ("edits", "retention", "rephrase")} for r in records],
    }


def run_larimar(cfg: BenchConfig) -> dict:

    from larimar.evaluation import counterfact, sequential
    from larimar.evaluation.config import EvalConfig
    from larimar.evaluation.context import EvalContext
    from larimar.benchmarks import load_counterfact

    t0 = time.perf_counter()
    ecfg = EvalConfig(
        "counterfact",
        cfg.larimar_model,
        cfg.counterfact,
        limit=cfg.cases,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        scope_model=cfg.scope_model,
        scope_threshold=cfg.scope_threshold,
        progress=False,
    )
    ctx = EvalContext(ecfg, needs_scope=cfg.scope_model is not None)
    load_s, rss_loaded = time.perf_counter() - t0, _rss_mib()
    cases = load_counterfact(cfg.counterfact, cfg.cases)
    records = counterfact.evaluate(ctx, cases, lambda k: None)
    conds = counterfact.conditions(records)
    summaries = {c: counterfact.condition_summary(records, c) for c in conds}
    edit_s = [r["edit_s"] for r in records]  # timed by the protocol, the edit alone, as for every method
    scfg = EvalConfig(
        "sequential",
        cfg.larimar_model,
        cfg.zsre,
        limit=cfg.stream,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        scope_model=None,
        checkpoints=cfg.checkpoints,
        progress=False,
    )
    sctx = EvalContext(scfg, model=ctx.model, needs_scope=False)
    seq = sequential.evaluate(sctx, [{"run": 0}], lambda k: None)
    mem = sctx.memory(capacity=len(sctx.facts), scope=False)
    seq_s = []
    for f in sctx.facts:  # the same stream, timed edit by edit
        t = time.perf_counter()
        mem.edit([f.prompt], [f.target])
        seq_s.append(time.perf_counter() - t)
    main = "scope" if "scope" in conds else "no_scope"
    return {
        "method": "larimar",
        "decoder": ctx.model.cfg.decoder,
        "counterfact": summaries[main],
        "counterfact_conditions": summaries,
        "condition": main,
        "edit": _times(edit_s),
        "sequential": _seq_summary(seq),
        "sequential_edit": _times(seq_s),
        "one_time_s": {"load_model_and_scope_embedder": load_s},
        "rss_loaded_mib": rss_loaded,
    }


def run_baseline(method: str, cfg: BenchConfig) -> dict:
    from larimar import backbones
    from larimar.baselines import make_editor
    from larimar.evaluation import sequential
    from larimar.evaluation import counterfact
    from larimar.benchmarks import load_counterfact, load_facts
    from larimar.evaluation.context import load_model

    t0 = time.perf_counter()
    if cfg.base == "larimar":
        model = load_model(cfg.larimar_model)
        lm, tok, bos, decoder = model.decoder.lm, model.decoder_tokenizer, model.bos_id, model.cfg.decoder
    else:
        (lm, tok), bos, decoder = backbones.load_decoder(cfg.base), None, cfg.base
    editor = make_editor(method, lm, tok, bos, cfg.options.get(method, []))
    load_s, rss_loaded = time.perf_counter() - t0, _rss_mib()
    one_time = {"load_model": load_s, **editor.prepare()}
    cases = load_counterfact(cfg.counterfact, cfg.cases)
    records = counterfact.evaluate_editor(editor, cases, batch_size=cfg.batch_size)
    facts = load_facts(cfg.zsre, cfg.stream, cfg.seed)
    seq, seq_s = sequential.evaluate_editor(editor, facts, cfg.checkpoints, 256, cfg.seed, batch_size=cfg.batch_size)
    return {
        "method": method,
        "decoder": decoder,
        "counterfact": counterfact.condition_summary(records, "edited"),
        "unedited": counterfact.condition_summary(records, "unedited"),
        "condition": "edited",
        "edit": _times([r["edit_s"] for r in records]),
        "sequential": _seq_summary(seq),
        "sequential_edit": _times(seq_s),
        "one_time_s": one_time,
        "rss_loaded_mib": rss_loaded,
        "settings": asdict(editor.cfg),
        "layer": getattr(editor, "layer", None),
    }


def run_method(method: str, cfg_dict: dict) -> dict:
    """One method in a fresh process: its own timings and its own peak memory."""
    import torch

    from larimar.config import from_dict

    cfg = from_dict(BenchConfig, cfg_dict)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    rss_start = _rss_mib()
    t0 = time.perf_counter()
    out = run_larimar(cfg) if method == "larimar" else run_baseline(method, cfg)
    out.update(
        wall_s=time.perf_counter() - t0,
        rss_start_mib=rss_start,
        rss_peak_mib=_rss_mib(),
        torch_threads=torch.get_num_threads(),
    )
    out["rss_over_model_mib"] = out["rss_peak_mib"] - out["rss_loaded_mib"]
    return out


def _method_key(cfg: BenchConfig, method: str) -> dict:
    """What a method's result depends on: the whole config but the output folder and the other
    methods (their list order and their --opt settings do not change this method's numbers)."""
    d = asdict(cfg)
    d.pop("out")
    d.pop("methods")
    d["options"] = d["options"].get(method, [])
    return d


def run(cfg: BenchConfig, log=print) -> tuple[list[dict], dict[str, Path]]:
    """Each method's result is saved as it finishes (``<out>/methods/<method>.json``, with the
    settings it was measured under), so a run cut short resumes with the same command: methods
    already measured under the same settings are read back, not rerun (a 100-case run of all
    five methods takes over an hour on 2 cores). The key is the settings, not the weights: after
    retraining a model under the same name or path, delete ``<out>/methods``."""
    results = []
    done_dir = Path(cfg.out) / "methods"
    done_dir.mkdir(parents=True, exist_ok=True)
    for method in cfg.methods:
        saved = done_dir / f"{method}.json"
        key = _method_key(cfg, method)
        if saved.exists():
            prev = json.loads(saved.read_text())
            if prev.get("key") == key:
                log(f"[bench_edit] {method}: measured earlier under the same settings, read from {saved}")
                results.append(prev["result"])
                continue
            log(f"[bench_edit] {method}: {saved} was measured under other settings; rerunning")
        log(f"[bench_edit] {method}: {cfg.cases} CounterFact cases, {cfg.stream}-edit zsRE stream ...")
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            res = pool.submit(run_method, method, asdict(cfg)).result()
        log(
            f"[bench_edit] {method}: edit median {res['edit']['median_s'] * 1000:.1f} ms, "
            f"Score {fmt(res['counterfact']['Score'])}, wall {res['wall_s']:.0f} s"
        )
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "result": res}, indent=2))
        tmp.replace(saved)
        results.append(res)
    return results, write(results, cfg)


# -- report ---------------------------------------------------------------------------------------

COLUMNS = [
    "method",
    "decoder",
    "ES",
    "PS",
    "NS",
    "Score",
    "seq retention",
    "seq rephrase",
    "edit median s",
    "edit p90 s",
    "seq edit median s",
    "one-time s",
    "peak RSS MiB",
    "RSS over model MiB",
    "ROME / method",
]


def rows(results: list[dict]) -> list[list]:
    rome = next((r for r in results if r["method"] == "rome"), None)
    out = []
    base = next((r for r in results if "unedited" in r), None)
    if base is not None:
        u = base["unedited"]
        out.append(
            [
                "unedited",
                base["decoder"],
                u["ES"],
                u["PS"],
                u["NS"],
                u["Score"],
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ]
        )
    for r in results:
        cf, name = r["counterfact"], r["method"] + (f" ({r['condition']})" if r["method"] == "larimar" else "")
        speedup = rome["edit"]["median_s"] / r["edit"]["median_s"] if rome and r["edit"]["median_s"] else None
        one_time = sum(v for k, v in r["one_time_s"].items() if not k.startswith("load"))
        out.append(
            [
                name,
                r["decoder"],
                cf["ES"],
                cf["PS"],
                cf["NS"],
                cf["Score"],
                r["sequential"]["retention"],
                r["sequential"]["rephrase"],
                r["edit"]["median_s"],
                r["edit"]["p90_s"],
                r["sequential_edit"]["median_s"],
                one_time,
                r["rss_peak_mib"],
                r["rss_over_model_mib"],
                speedup,
            ]
        )
    return out


def target_check(results: list[dict]) -> list[str]:
    """The issue's target: Larimar >= 100x faster per edit than ROME, ES/PS/NS within 5 points of ROME's."""
    lar = next((r for r in results if r["method"] == "larimar"), None)
    rome = next((r for r in results if r["method"] == "rome"), None)
    if lar is None or rome is None:
        return ["target check needs both larimar and rome"]
    speed = rome["edit"]["median_s"] / lar["edit"]["median_s"]
    gaps = {k: 100 * (lar["counterfact"][k] - rome["counterfact"][k]) for k in ("ES", "PS", "NS")}
    ok_acc = all(abs(v) <= 5 or v > 0 for v in gaps.values())
    notes = [
        f"Larimar edit median {lar['edit']['median_s'] * 1000:.1f} ms vs ROME {rome['edit']['median_s']:.2f} s: "
        f"{speed:.0f}x faster ({'meets' if speed >= 100 else 'misses'} the >= 100x target)",
        "Larimar - ROME, points: "
        + ", ".join(f"{k} {v:+.1f}" for k, v in gaps.items())
        + f" ({'within 5 points or better' if ok_acc else 'NOT within 5 points'})",
    ]
    if lar["decoder"] != rome["decoder"]:
        notes.append(
            f"Larimar's decoder ({lar['decoder']}) is not the baselines' ({rome['decoder']}): "
            "accuracies are not comparable, timings are"
        )
    return notes


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in results:
        x = r["edit"]["median_s"]
        ax.scatter([x], [r["counterfact"]["Score"] or 0.0], marker="o", s=50)
        ax.annotate(r["method"], (x, r["counterfact"]["Score"] or 0.0), textcoords="offset points", xytext=(5, 5))
        if r["sequential"]["retention"] is not None:
            ax.scatter(
                [r["sequential_edit"]["median_s"]],
                [r["sequential"]["retention"]],
                marker="^",
                s=40,
                facecolors="none",
                edgecolors="gray",
            )
    ax.set_xscale("log")
    ax.set(
        xlabel="wall time per edit, median (s, log scale)",
        ylabel="accuracy",
        title="Accuracy vs time per edit (o CounterFact Score, ^ zsRE stream retention)",
    )
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: list[dict], cfg: BenchConfig) -> dict[str, Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"bench_edit.{k}" for k in ("json", "md", "csv", "png")}
    table_rows = rows(results)
    notes = target_check(results) + [
        f"{cfg.cases} CounterFact cases from {cfg.counterfact} (ES/PS/NS/Score, ROME protocol; Larimar condition "
        f"{next((r['condition'] for r in results if r['method'] == 'larimar'), 'n/a')}); zsRE stream: the first "
        f"{cfg.stream} records of {cfg.zsre}, edited sequentially (retention / held-out rephrase token accuracy after the last edit).",
        "edit times are wall clock of the edit alone (no scoring); one-time s = ROME stats + templates, IKE retriever and "
        "demo pool (model loading apart, in the JSON); peak RSS is each method's own process.",
    ]
    paths["json"].write_text(json.dumps({"config": asdict(cfg), "results": results, "notes": notes}, indent=2))
    md = ["# Edit speed vs accuracy", "", markdown_table(COLUMNS, table_rows), ""] + [f"- {n}" for n in notes]
    paths["md"].write_text("\n".join(md) + "\n")
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(table_rows)
    plot(results, paths["png"])
    return paths
