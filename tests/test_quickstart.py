"""The README's HTTP quickstart, run as written: its server block starts the real application
(`serve run ...` with the shipped model), its client block (curl + the official openai client,
streaming a chat completion) runs in bash against it. If the README changes, this runs the change."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import stop_group, wait_http

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
        wait_http("http://localhost:8000/readyz", 900, "the quickstart server", server, tmp_path / "server.log")
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
        stop_group(server)  # `larimar serve` shuts Serve and its Ray down on Ctrl-C
        log.close()
