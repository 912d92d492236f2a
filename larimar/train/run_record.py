"""What a training run leaves in its directory besides checkpoints: the resolved config it ran
with (``config.yaml``) and one JSON line per logged step (``metrics.jsonl``: every loss term, lr,
tokens/s, step time, validation metrics when computed).

The learning curve reads ``metrics.jsonl`` (`read_metrics`) instead of parsing log text. A run
resumed from a checkpoint drops the lines logged after that checkpoint (they are recomputed), so
the file always describes the steps that led to the current state. Paths are local directories
or pyarrow URIs (``s3://...``), like checkpoints; the file is small (one line per
``run.log_every`` steps) and is rewritten whole, which object stores allow and appends do not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


def _fs(uri: str):
    import pyarrow.fs

    if "://" not in uri:
        uri = str(Path(uri).resolve())
    return pyarrow.fs.FileSystem.from_uri(uri)


def _read(uri: str) -> str | None:
    import pyarrow.fs

    fs, path = _fs(uri)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _write(uri: str, text: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(text.encode())
    fs.move(tmp, path)


def write_config(config: dict, run_dir: str) -> str:
    """The resolved config (paths absolute, defaults filled in) as YAML: what the run really used."""
    uri = f"{run_dir.rstrip('/')}/{CONFIG_FILE}"
    _write(uri, yaml.safe_dump(config, sort_keys=False))
    return uri


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """Rank 0's ``metrics.jsonl``: `append` one dict per logged step."""

    def __init__(self, run_dir: str, resume_step: int = 0):
        self.uri = f"{run_dir.rstrip('/')}/{METRICS_FILE}"
        old = _read(self.uri) or ""
        self.lines = [line for line in old.splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]

    def append(self, record: dict) -> None:
        self.lines.append(json.dumps({k: _clean(v) for k, v in record.items()}, separators=(",", ":")))
        _write(self.uri, "\n".join(self.lines) + "\n")


def read_metrics(path: str) -> list[dict]:
    """The records of a run's metrics.jsonl (a file, or the run directory holding one), by step."""
    uri = path if path.endswith(METRICS_FILE) else f"{path.rstrip('/')}/{METRICS_FILE}"
    text = _read(uri)
    if text is None:
        raise FileNotFoundError(f"{uri} does not exist (runs write it from this version on; older runs: --logs)")
    return sorted((json.loads(line) for line in text.splitlines() if line.strip()), key=lambda r: r["step"])


def losses(records: list[dict]) -> list[tuple[int, float]]:
    """(step, loss) of every record: the learning curve's training-loss series."""
    return [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
