"""Failures under load: kill the decoder, the encoder and the memory actor while clients edit and generate.

    python jobs/bench_failover.py [--model larimar-smol-v3] [--clients 16] [--out runs/bench_failover.json]

Starts the Serve application on an embedded local Ray, then runs `clients` HTTP clients (half
write single facts, each with its own Idempotency-Key and retrying a 503 after its Retry-After;
half alternate /generate and a streamed /v1/completions) and a /readyz probe every 0.2 s. After
`--settle-s` of load it kills one replica (`ray.kill`, as a crash or an OOM kill would; Serve's
controller starts a replacement), waits until /readyz has said 503 and then ready again (or
30 s pass without a 503: then `readyz_503_seen` is false) and the load has run `--settle-s`
more, then kills the next: Decoder, Encoder, MemoryActor.

Reported per outage: requests answered 200, answered 503 with Retry-After, and anything else (a
500, a 503 without Retry-After, a stream cut without an error event, a client timeout = a hang,
a refused connection); how long /readyz said 503 and when the last failed request of the window
ended, both counted from the kill. At the end, every acknowledged fact id must be in the memory
and no text stored twice (`acknowledged_lost`, `duplicates`). `tests/test_serve.py` runs the same
`run_failover` against the test application and asserts all of that.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from larimar.model import DEFAULT_MODEL

from larimar.serving.local import URL

TARGETS = ("Decoder", "Encoder", "MemoryActor")


@dataclass
class Call:
    kind: str  # "write", "generate", "stream"
    t0: float
    t1: float
    outcome: str  # "ok", "503", or what went wrong: "500", "503-no-retry-after", "timeout", "cut", ...


def replica(deployment: str):
    """The live replica actor of a deployment of the "larimar" application."""
    import ray

    for info in ray.util.list_named_actors(all_namespaces=True):
        name = info["name"]
        if name.startswith("SERVE_REPLICA") and f"#{deployment}#" in name:
            return ray.get_actor(name, namespace=info["namespace"])
    raise LookupError(f"no {deployment} replica found")


def _outcome(r: requests.Response) -> str:
    if r.status_code == 200:
        return "ok"
    if r.status_code == 503:
        return "503" if r.headers.get("Retry-After") else "503-no-retry-after"
    return str(r.status_code)


class Load:
    """Clients and a readiness probe in threads; every call recorded with its outcome."""

    def __init__(self, url: str, headers: dict, memory_id: str, clients: int, timeout_s: float, model: str = "larimar"):
        self.url, self.headers, self.mid, self.timeout_s, self.model = url, headers, memory_id, timeout_s, model
        self.calls: list[Call] = []
        self.ready: list[tuple[float, int]] = []  # (time, /readyz status)
        self.acked: dict[int, str] = {}  # fact id -> text
        self.stop = threading.Event()
        self.lock = threading.Lock()
        writers = max(1, clients // 2)
        self.threads = [threading.Thread(target=self._writer, args=(i,), daemon=True) for i in range(writers)]
        self.threads += [
            threading.Thread(target=self._generator, args=(i,), daemon=True) for i in range(clients - writers)
        ]
        self.threads.append(threading.Thread(target=self._probe, daemon=True))
        self.run_id = uuid.uuid4().hex[:8]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(self.timeout_s + 5)

    def _record(self, kind: str, t0: float, outcome: str) -> None:
        with self.lock:
            self.calls.append(Call(kind, t0, time.time(), outcome))

    def _post(self, s: requests.Session, path: str, body: dict, kind: str, **kw) -> requests.Response | None:
        t0 = time.time()
        try:
            r = s.post(
                f"{self.url}{path}", json=body, headers=kw.pop("headers", self.headers), timeout=self.timeout_s, **kw
            )
        except requests.Timeout:
            self._record(kind, t0, "timeout")
            return None
        except requests.ConnectionError:
            self._record(kind, t0, "connection")
            return None
        if kind != "stream" or r.status_code != 200:
            self._record(kind, t0, _outcome(r))
            if kind == "stream":
                r.close()
        else:  # a stream: ok only if it ends with [DONE]; a lost replica must send an error event
            outcome = "cut"
            try:
                for line in r.iter_lines(decode_unicode=True):
                    if line == "data: [DONE]":
                        outcome = "ok"
                    elif line.startswith("data: ") and '"error"' in line:
                        outcome = (
                            "503" if '"code": "unavailable"' in line or '"code":"unavailable"' in line else "error"
                        )
            except requests.RequestException:
                outcome = "cut"
            self._record(kind, t0, outcome)
        return r

    def _writer(self, i: int) -> None:
        with requests.Session() as s:
            j = 0
            while not self.stop.is_set():
                text = f"w{i} {self.run_id} {j}"  # unique, and short enough for any encoder's max_length
                headers = {**self.headers, "Idempotency-Key": f"{self.run_id}-{i}-{j}"}
                while not self.stop.is_set():  # one fact, retried until acknowledged, as a careful client does
                    r = self._post(
                        s, f"/v1/memories/{self.mid}/facts", {"facts": [{"text": text}]}, "write", headers=headers
                    )
                    if r is not None and r.status_code == 200:
                        [fid] = r.json()["ids"]
                        with self.lock:
                            self.acked[fid] = text
                        break
                    if r is not None and r.status_code not in (429, 503):
                        break  # refused (recorded as an error): retrying the same request cannot help
                    wait = float(r.headers.get("Retry-After", 1)) if r is not None else 1.0
                    self.stop.wait(min(wait, 1.0))
                j += 1

    def _generator(self, i: int) -> None:
        with requests.Session() as s:
            j = 0
            while not self.stop.is_set():
                if j % 2 == 0:
                    self._post(
                        s,
                        f"/v1/memories/{self.mid}/generate",
                        {"prompt": f"client {i} asks", "max_tokens": 4},
                        "generate",
                    )
                else:
                    body = {
                        "model": f"{self.model}:{self.mid}",
                        "prompt": f"client {i} asks",
                        "max_tokens": 4,
                        "stream": True,
                    }
                    self._post(s, "/v1/completions", body, "stream", stream=True)
                j += 1

    def _probe(self) -> None:
        while not self.stop.is_set():
            try:
                status = requests.get(f"{self.url}/readyz", timeout=self.timeout_s).status_code
            except requests.RequestException:
                status = 0
            self.ready.append((time.time(), status))
            self.stop.wait(0.2)

    def recovered_since(self, t: float) -> tuple[bool, bool]:
        """(/readyz said not ready at some point after `t`, and it says ready again now)."""
        after = [s for ts, s in list(self.ready) if ts >= t]
        down = next((i for i, s in enumerate(after) if s != 200), None)
        return down is not None, down is not None and after[-1] == 200


def _window(load: Load, kill_t: float, end_t: float, target: str) -> dict:
    calls = [c for c in load.calls if kill_t <= c.t1 < end_t]
    by: dict[str, int] = {}
    for c in calls:
        by[c.outcome] = by.get(c.outcome, 0) + 1
    failed = [c for c in calls if c.outcome != "ok"]
    unready = [ts for ts, s in load.ready if kill_t <= ts < end_t and s != 200]
    back = [ts for ts, s in load.ready if ts >= (max(unready) if unready else kill_t) and s == 200 and ts < end_t]
    transitions, last = [], None  # /readyz over the window: (seconds after the kill, status) at each change
    for ts, st in load.ready:
        if kill_t <= ts < end_t and st != last:
            transitions.append((round(ts - kill_t, 2), st))
            last = st
    return {
        "target": target,
        "readyz": transitions,
        "requests": len(calls),
        "outcomes": by,
        "ok": by.get("ok", 0),
        "unavailable_503": by.get("503", 0),
        "other_errors": len(failed) - by.get("503", 0),
        "by_kind": {k: sum(1 for c in calls if c.kind == k) for k in ("write", "generate", "stream")},
        "readyz_503_seen": bool(unready),
        "readyz_503_from_s": (min(unready) - kill_t) if unready else None,
        "readyz_503_until_s": (max(unready) - kill_t) if unready else None,
        "readyz_back_after_s": (min(back) - kill_t) if back else None,
        "last_error_after_s": (max(c.t1 for c in failed) - kill_t) if failed else 0.0,
    }


def run_failover(
    url: str,
    headers: dict,
    memory_id: str,
    targets=TARGETS,
    clients: int = 16,
    settle_s: float = 5.0,
    recover_timeout_s: float = 180.0,
    notice_timeout_s: float = 30.0,
    timeout_s: float = 120.0,
    model: str = "larimar",
) -> dict:
    """Load, kill each target in turn, wait for recovery; per-outage figures and the durability check."""
    import ray

    load = Load(url, headers, memory_id, clients, timeout_s, model)
    load.start()
    started = time.time()
    time.sleep(settle_s)
    kills = []
    for target in targets:
        actor = replica(target)
        t = time.time()
        ray.kill(actor, no_restart=False)
        # Serve's controller notices the death at its next health check (health_check_period_s):
        # wait for /readyz to say so, then for it to say ready again.
        deadline, notice_by = t + recover_timeout_s, t + notice_timeout_s
        while time.time() < deadline:
            noticed, back = load.recovered_since(t)
            if back or (not noticed and time.time() > notice_by):
                break
            time.sleep(0.2)
        recovered = load.recovered_since(t)[1]
        time.sleep(settle_s)  # load on the replacement before the next kill
        kills.append((target, t, time.time(), recovered))
    load.finish()
    windows = [_window(load, t, end, target) | {"recovered": rec} for target, t, end, rec in kills]
    r = requests.get(f"{url}/v1/memories/{memory_id}", headers=headers, timeout=timeout_s)
    r.raise_for_status()
    stored = {f["id"]: f["text"] for f in r.json()["stored"]}
    texts = list(stored.values())
    return {
        "clients": clients,
        "outages": windows,
        "acknowledged": len(load.acked),
        "acknowledged_lost": sorted(i for i in load.acked if stored.get(i) != load.acked[i]),
        "duplicates": len(texts) - len(set(texts)),
        "requests": len(load.calls),
        "before_first_kill": _window(load, started, kills[0][1], "none") if kills else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="saved model directory or bundled name")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--settle-s", type=float, default=10.0, help="load before the first kill and after each recovery"
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=2048,
        help="K of the memory written (at most the store's 4096): room for every write, a full one answers 409",
    )
    parser.add_argument(
        "--encoder-compile",
        action="store_true",
        help="ServeSettings.encoder_compile: a replaced encoder replica compiles again before it is ready",
    )
    parser.add_argument("--out", default="runs/bench_failover.json")
    args = parser.parse_args()

    from larimar.serving.local import local_application

    with local_application(args.model, snapshot_every=50, encoder_compile=args.encoder_compile) as headers:
        created = requests.post(f"{URL}/v1/memories", json={"slots": args.slots}, headers=headers)
        if created.status_code != 201:
            parser.error(f"--slots {args.slots}: {created.json()['error']['message']}")
        mid = created.json()["id"]
        report = {"model": args.model, "encoder_compile": args.encoder_compile} | run_failover(
            URL, headers, mid, clients=args.clients, settle_s=args.settle_s
        )
    for w in report["outages"]:
        print(
            f"kill {w['target']:11s}: {w['requests']} requests, {w['ok']} ok, {w['unavailable_503']} 503+Retry-After, "
            f"{w['other_errors']} other {w['outcomes']}; /readyz 503 from {w['readyz_503_from_s']} to {w['readyz_503_until_s']} s, "
            f"ready after {w['readyz_back_after_s']} s; last error {w['last_error_after_s']:.1f} s after the kill",
            flush=True,
        )
    print(
        f"acknowledged {report['acknowledged']}, lost {len(report['acknowledged_lost'])}, duplicates {report['duplicates']}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=asdict))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
