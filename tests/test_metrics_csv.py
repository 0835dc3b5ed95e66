"""metrics.csv is appended to during a run and must read back exactly like a file written whole."""

import math

import numpy as np
import pandas as pd

from raysim.runner import _MetricsCSV, _tidy


def _rows():
    return [
        {"round": 1, "step": 2, "train_loss": 0.5, "r2": float("nan"), "status": "ok", "lambda": np.float64(0.1)},
        {"round": 2, "step": 4, "train_loss": 0.30000000000000004, "r2": 0.25, "status": "ok", "lambda": 0.0},
        # a new column mid-run forces a rewrite; None and NaN both become empty cells
        {"round": 3, "step": 6, "train_loss": 1e-12, "r2": None, "status": "a,b \"quoted\"", "lambda": 2.5,
         "soft_iou": 0.9},
        {"round": 4, "step": 8, "train_loss": np.float32(0.125), "r2": 0.5, "status": "ok", "lambda": 3,
         "soft_iou": float("inf")},
    ]


def test_appended_metrics_read_back_like_a_whole_write(tmp_path):
    rows = _rows()
    m = _MetricsCSV(tmp_path / "metrics.csv")
    for i in range(1, len(rows) + 1):
        m.write(rows[:i])
        got = pd.read_csv(tmp_path / "metrics.csv")
        whole = tmp_path / "whole.csv"
        whole.write_text(_tidy(rows[:i]).to_csv(index=False))
        want = pd.read_csv(whole)
        pd.testing.assert_frame_equal(got, want)
    assert list(pd.read_csv(tmp_path / "metrics.csv")["status"])[2] == 'a,b "quoted"'
    assert math.isinf(pd.read_csv(tmp_path / "metrics.csv")["soft_iou"].iloc[3])


def test_final_rewrite_is_the_pandas_file(tmp_path):
    rows = _rows()
    m = _MetricsCSV(tmp_path / "metrics.csv")
    for i in range(1, len(rows) + 1):
        m.write(rows[:i])
    df = m.rewrite(rows)
    assert (tmp_path / "metrics.csv").read_text() == df.to_csv(index=False)
