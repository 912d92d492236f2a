"""jobs/bench_edit_path.py runs every stage of the edit path for real (encoder, log entry, fsync,
apply) and reports each; here on the tiny model, which shares none of the real one's speed."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_edit_path_benchmark_times_every_stage_and_applies_the_writes(tmp_path):
    from tests.conftest import tiny_editor

    model_dir = tiny_editor().model.save_pretrained(tmp_path / "tiny")
    spec = importlib.util.spec_from_file_location("bench_edit_path", ROOT / "jobs" / "bench_edit_path.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    args = ["--model", str(model_dir), "--sizes", "1,9", "--repeats", "1", "--out", str(out)]
    report = bench.main([*args, "--encoder-workers", "2"])  # 9 edits: more than one chunk of 16 texts
    assert json.loads(out.read_text()) == report and report["encoder_workers"] == 2
    assert [r["facts"] for r in report["rows"]] == [1, 9]
    for row in report["rows"]:
        for key in ("encode_ms", "write_fsync_ms", "memory_update_ms", "persist_apply_ms", "total_ms"):
            assert row[key] > 0, key
    one, nine = report["rows"]
    assert nine["log_entry_kib"] > one["log_entry_kib"]  # every fact's vectors are in its log entry
