"""Where the CPU goes while 32 clients write single facts over HTTP: py-spy on every Serve process.

    python jobs/diagnostics/profile_serve_writes.py [--model larimar-smol-v3] [--seconds 15] [--out runs/prof_serve]

Starts the application as `jobs/bench_serve.py` does, drives `--clients` writers, and samples
the proxy, the ingress, the encoder and the memory actor with `py-spy record --format raw`
(collapsed stacks, idle frames dropped) for `--seconds`. Prints, per process, its share of the
samples (busy CPU) and the functions with the most inclusive samples; writes the raw files.
Before that, the CPU every process on the machine used over the same window (psutil's CPU times:
HAProxy, which py-spy cannot sample, Ray's raylet and GCS, the clients in this process).
Needs `pip install py-spy` (a diagnostic, not a dependency of the project).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from larimar.serving.local import URL, settings_from_pairs

ROLES = {
    "ProxyActor": "proxy",
    "Ingress": "ingress",
    "Encoder": "encoder",
    "MemoryActor": "memory",
    "Decoder": "decoder",
}


def serve_pids() -> dict[str, int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    pids = {}
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        for needle, role in ROLES.items():
            if args.startswith("ray::") and needle in args and role not in pids:
                pids[role] = int(pid)
    return pids


def process_label(proc) -> str:
    """A short name for a process: Serve's role, the Ray actor or daemon, or the executable."""
    try:
        args = " ".join(proc.cmdline()) or proc.name()
    except Exception:  # noqa: BLE001 - it exited meanwhile, or is not ours to read
        return "?"
    for needle, role in ROLES.items():
        if args.startswith("ray::") and needle in args:
            return role
    if args.startswith("ray::"):
        return args.split()[0]
    if proc.pid == os.getpid():
        return "clients (this process)"
    return Path(args.split()[0]).name


def cpu_times() -> dict[int, tuple[str, float]]:
    import psutil

    out = {}
    for proc in psutil.process_iter():
        try:
            t = proc.cpu_times()
            out[proc.pid] = (process_label(proc), t.user + t.system)
        except Exception:  # noqa: BLE001 - exited meanwhile
            continue
    return out


def cpu_shares(before: dict, after: dict, seconds: float) -> list[tuple[str, float]]:
    """Per label, the share of one core used between the two snapshots, largest first."""
    used = collections.Counter()
    for pid, (label, t) in after.items():
        if pid in before:
            used[label] += (t - before[pid][1]) / seconds
    return [(label, share) for label, share in used.most_common() if share >= 0.01]


def summarize(raw: Path, top: int) -> tuple[int, list[tuple[str, int]]]:
    """Total samples and the `top` frames by inclusive samples (each frame once per stack)."""
    total, incl = 0, collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for frame in set(stack.split(";")):
            incl[frame] += int(n)
    return total, incl.most_common(top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="larimar-smol-v3")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default="runs/prof_serve")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a ServeSettings value (YAML), repeatable"
    )
    p.add_argument("--slots", type=int, default=4096, help="K of the memory written (bench_serve's edits: 512)")
    a = p.parse_args()

    from larimar.serving.local import local_application

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        settings = settings_from_pairs(a.set)
    except ValueError as err:
        p.error(f"--set {err}")
    with local_application(a.model, **settings) as headers:
        mid = requests.post(f"{URL}/v1/memories", json={"slots": a.slots}, headers=headers).json()["id"]
        stop, done = threading.Event(), collections.Counter()

        def writer(i: int) -> None:
            with requests.Session() as s:
                j = 0
                while not stop.is_set():
                    fact = {"prompt": f"person {i} item {j} is", "target": f"value {j}"}
                    r = s.post(f"{URL}/v1/memories/{mid}/facts", headers=headers, json={"facts": [fact]})
                    done[r.status_code] += 1
                    j += 1

        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(a.clients)]
        for t in threads:
            t.start()
        time.sleep(3)  # warm
        pids = serve_pids()
        print("profiling", pids, flush=True)
        before, cpu_before, t_cpu = sum(done.values()), cpu_times(), time.time()
        time.sleep(a.seconds)  # first the whole machine's CPU, unprofiled
        cpu_after, cpu_s = cpu_times(), time.time() - t_cpu
        unprofiled = (sum(done.values()) - before) / cpu_s
        before = sum(done.values())
        spies = {
            role: subprocess.Popen(
                [
                    shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-r",
                    str(a.rate),
                    "-d",
                    str(a.seconds),
                    "-p",
                    str(pid),
                    "-o",
                    str(out / f"{role}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, pid in pids.items()
            if role != "decoder"
        }
        t0 = time.time()
        for sp in spies.values():
            sp.wait()
        rate = (sum(done.values()) - before) / (time.time() - t0)
        stop.set()
        for t in threads:
            t.join()
    print(f"\n{unprofiled:.1f} edits/s unprofiled; the CPU of each process over {cpu_s:.1f} s (share of one core):")
    for label, share in cpu_shares(cpu_before, cpu_after, cpu_s):
        print(f"{share:7.0%}  {share / max(unprofiled, 1e-9) * 1e3:6.2f} ms per edit  {label}")
    print(f"\n{rate:.1f} edits/s while profiled (py-spy itself takes CPU); statuses {dict(done)}")
    for role in spies:
        raw = out / f"{role}.txt"
        if not raw.exists():
            print(f"{role}: no samples")
            continue
        total, top = summarize(raw, a.top)
        print(f"\n== {role}: {total} busy samples = {total / (a.rate * a.seconds):.0%} of one core")
        for frame, n in top:
            print(f"{n / max(total, 1):6.1%}  {frame[:150]}")


if __name__ == "__main__":
    main()
