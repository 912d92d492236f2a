"""Real processes the slow tests start and stop: a `ray start --head` isolated from every other Ray
on the machine, waiting for an HTTP endpoint, and stopping a process group. One copy, used by the
monitoring test (whose Ray head also takes the `ray job submit` test), the quickstart and the wheel tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

HEAD_PORTS = (
    "port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "ray-client-server-port",
    "runtime-env-agent-port",
    "node-manager-port",
    "object-manager-port",
)


def free_ports(n: int) -> list[int]:
    """n distinct ports free on every interface right now (all held open together while chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """Stop exactly the cluster this test started: its process group, then any straggler whose
    command line names its private temp dir (raylet, GCS, agents and workers all do). SIGTERM
    gets 5 s: `ray start --block` with Serve deployed never exited within 30 s of it (the
    tests' teardown waited those 30 s every time), and nothing of a test cluster needs keeping."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        try:
            head.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    marks = (f"{temp_dir}/".encode(), f"{temp_dir}\0".encode())  # the dir itself, not a longer name
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if any(m in cmdline for m in marks):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


def wait_http(url: str, deadline_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Until `url` answers 200; fails with the log's tail if `proc` exits first or time runs out."""
    deadline = time.time() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # a cold /readyz takes seconds
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited {proc.returncode}: {log.read_text()[-3000:] if log else ''}")
        if time.time() > deadline:
            pytest.fail(
                f"{what} did not answer {url} within {deadline_s:.0f} s: {log.read_text()[-3000:] if log else ''}"
            )
        time.sleep(1)


def start_ray_head(env: dict, log: Path, cwd: Path | None = None) -> tuple[subprocess.Popen, dict[str, int], str]:
    """`ray start --head --block` with every port chosen free and a private --temp-dir (short: Ray's
    socket paths must fit 107 bytes), so it never meets another cluster on this machine; --block
    keeps it in the foreground, in its own process group, which `stop_head` stops (`ray stop` would
    stop every Ray on the machine). Returns (process, ports by flag name, temp dir)."""
    ports = dict(zip(HEAD_PORTS, free_ports(len(HEAD_PORTS))))
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            *(f"--{k}={v}" for k, v in ports.items()),
            "--num-cpus=4",
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
            "--block",
        ],
        env=env,
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return head, ports, temp_dir


def stop_group(proc: subprocess.Popen, timeout: float = 90) -> None:
    """Ctrl-C to a process group started with start_new_session (a server shuts Serve and its Ray
    down on it), then SIGKILL if it has not exited within `timeout` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
