"""Two Serve settings compared on HTTP edits, in alternating rounds of one session.

    python jobs/diagnostics/ab_serve_edits.py --model larimar-smol-facts \
        --a encoder_compile=false --b encoder_compile=true [--rounds 2] [--out runs/ab_edits.json]

Why alternating rounds: on these 2 shared cores the same configuration measured minutes apart
moved by 20% and more (this script's eager rounds, same settings each time: one client's p50 23.0
to 30.2 ms, 32 clients 183 to 224 edits/s), so a "before" and an "after" from two runs mostly
measure the machine.
Each round starts the application with A's settings, then with B's (`local_application`), and
measures single-fact edits at 1 client (p50) and at 32 (edits/s), after a short warm-up; the
summary is the median over rounds of each, and the per-round B/A ratios.
"""

from __future__ import annotations

import argparse
import statistics

from larimar.serving.local import edit_latency, local_application, save_report, settings_from_pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="larimar-smol-facts")
    p.add_argument("--a", nargs="*", default=[], metavar="KEY=VALUE", help="configuration A (ServeSettings, YAML)")
    p.add_argument("--b", nargs="*", default=[], metavar="KEY=VALUE", help="configuration B")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--edits-1", type=int, default=300, help="edits at 1 client per round")
    p.add_argument("--edits-32", type=int, default=480, help="edits at 32 clients per round")
    p.add_argument("--out", default="runs/ab_serve_edits.json")
    a = p.parse_args()
    try:
        configs = {"A": settings_from_pairs(a.a), "B": settings_from_pairs(a.b)}
    except ValueError as err:
        p.error(str(err))
    rows = []
    for r in range(a.rounds):
        for name, served in configs.items():
            with local_application(a.model, **served) as headers:
                edit_latency(1, 20, headers, "asyncio")  # warm-up: first calls, caches
                one = edit_latency(1, a.edits_1, headers, "asyncio")
                many = edit_latency(32, max(1, a.edits_32 // 32), headers, "asyncio")
            row = {"round": r, "config": name, "p50_ms_1": one["p50_ms"], "edits_per_s_32": many["edits_per_s"]}
            rows.append(row)
            print(
                f"round {r} {name}: 1 client p50 {one['p50_ms']:.1f} ms, 32 clients {many['edits_per_s']:.1f} edits/s",
                flush=True,
            )
    summary = {}
    for name in configs:
        mine = [x for x in rows if x["config"] == name]
        summary[name] = {
            "p50_ms_1": statistics.median(x["p50_ms_1"] for x in mine),
            "edits_per_s_32": statistics.median(x["edits_per_s_32"] for x in mine),
        }
    pairs = list(zip(rows[0::2], rows[1::2]))
    summary["B_over_A"] = {
        "p50_ms_1": [b["p50_ms_1"] / a_["p50_ms_1"] for a_, b in pairs],
        "edits_per_s_32": [b["edits_per_s_32"] / a_["edits_per_s_32"] for a_, b in pairs],
    }
    for name in configs:
        s = summary[name]
        print(
            f"{name} {configs[name]}: median p50 {s['p50_ms_1']:.1f} ms at 1 client, {s['edits_per_s_32']:.1f} edits/s at 32"
        )
    save_report(a.out, {"model": a.model, "configs": configs, "rounds": rows, "summary": summary})


if __name__ == "__main__":
    main()
