"""The README's HTTP quickstart, run as written: its server block starts the real application
(`serve run ...` with the shipped model), its client block (curl + the official openai client,
streaming a chat completion) runs in bash against it. If the README changes, this runs the change."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def block(marker: str) -> str:
    """The fenced code block right after `<!-- quickstart:<marker> -->` in the README."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- quickstart:{marker} -->\s*```bash\n(.*?)```", text, re.S)
    assert m, f"README.md has no quickstart:{marker} block"
    return m.group(1)


def test_the_readme_quickstart_runs_against_a_live_server(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_ADDRESS": "local",  # its own Ray, never a cluster another process left running
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        ["bash", "-c", block("server")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if requests.get("http://localhost:8000/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(3)
        else:
            pytest.fail("the quickstart server never became ready:\n" + (tmp_path / "server.log").read_text()[-3000:])
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block("client")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        answers = re.findall(r"answer: (.*)", out.stdout)  # curl prints no newline: not always at a line start
        assert len(answers) == 2, out.stdout
        assert "Rome" in answers[0] and "Rome" not in answers[1], answers  # written, then forgotten
        assert '"ready"' in out.stdout and '"forgotten":1' in out.stdout.replace(" ", "")
    finally:
        os.killpg(server.pid, signal.SIGINT)  # serve run shuts Serve and its Ray down on Ctrl-C
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
