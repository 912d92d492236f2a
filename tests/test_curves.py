"""Learning curves (larimar/evaluation/curves.py): losses parsed from training logs, windows, files.

The checkpoint side (a kept checkpoint loaded as a model and evaluated) runs in
tests/test_train.py, on checkpoints of a real run."""

import csv

import pytest

from larimar.evaluation.curves import LearningCurve, merge_logs, parse_train_log, pick, window_means

FIRST = """[larimar] 55968 chunks of <= 62 tokens
(RayTrainWorker pid=1) [larimar] step 1/4 loss=4.5000 kl=1.0 reconstruction=4.500 beta=0.000 tokens/s=9 step=1s ETA 3s
(RayTrainWorker pid=1) [larimar] step 2/4 loss=3.5000 kl=1.0 reconstruction=3.500 beta=0.000 tokens/s=9 step=1s ETA 2s
some other line with step 3/4 loss=0.1
"""
RESUMED = """(RayTrainWorker pid=2) [larimar] resumed at step 2/6 (epoch 0, batch 2)
(RayTrainWorker pid=2) [larimar] step 2/6 loss=3.2500 kl=1.0 reconstruction=3.250 beta=0.000 tokens/s=9 step=1s ETA 4s
(RayTrainWorker pid=2) [larimar] step 3/6 loss=2.0000 kl=1.0 reconstruction=2.000 beta=0.000 tokens/s=9 step=1s ETA 3s
(RayTrainWorker pid=2) [larimar] step 6/6 loss=1.0000 kl=1.0 reconstruction=1.000 beta=0.000 tokens/s=9 step=1s ETA 0s
"""


def test_logs_merge_with_the_later_log_winning_a_repeated_step():
    assert parse_train_log(FIRST) == {1: 4.5, 2: 3.5}  # only rank 0's [larimar] step lines
    assert merge_logs([FIRST, RESUMED]) == [(1, 4.5), (2, 3.25), (3, 2.0), (6, 1.0)]


def test_window_means_group_by_step_not_by_count():
    points = [(1, 4.0), (2, 2.0), (3, 3.0), (6, 1.0)]
    assert window_means(points, 3) == [(1, 3, 3.0), (4, 6, 1.0)]
    with pytest.raises(ValueError, match="window"):
        window_means(points, 0)


def test_pick_walks_a_summary_and_misses_quietly():
    summary = {"scope": {"ES": 0.9}}
    assert pick(summary, ("scope", "ES")) == 0.9
    assert pick(summary, ("scope", "PS")) is None and pick(summary, ("no_scope", "ES")) is None


def test_curve_files(tmp_path):
    curve = LearningCurve(
        "run",
        merge_logs([FIRST, RESUMED]),
        window=3,
        checkpoints=[{"step": 3, "ES": 0.5, "PS": 0.25}, {"step": 6, "ES": 0.75, "PS": None}],
    )
    paths = curve.write(tmp_path)
    assert {p.name for p in paths.values()} == {"curve.md", "loss.csv", "curve.png", "checkpoints.csv"}
    assert list(csv.reader(paths["loss_csv"].open()))[1:] == [["1", "4.5"], ["2", "3.25"], ["3", "2.0"], ["6", "1.0"]]
    assert list(csv.reader(paths["metrics_csv"].open())) == [
        ["step", "ES", "PS"],
        ["3", "0.5000", "0.2500"],
        ["6", "0.7500", "n/a"],
    ]
    md = paths["md"].read_text()
    assert "| 1-3 | 3.250 |" in md and "| 4-6 | 1.000 |" in md and "| 6 | 0.750 | n/a |" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
