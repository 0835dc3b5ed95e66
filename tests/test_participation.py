"""Participation models (docs/data.md section 4): rates match their parameters; stragglers' partial work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.algorithms.base import partial_work_mask
from raysim.config import ConfigError, load_config
from raysim.data.participation import build_participation


def part(n_clients: int, *sets: str, seed: int = 0):
    cfg = load_config(None, [f"data.n_clients={n_clients}", *sets])
    return build_participation(cfg.participation, n_clients, seed)


def test_uniform_unchanged_and_full():
    p = part(50, "participation.rate=0.2")
    s = p.select(3)
    assert s.n_selected == 10 and s.n_reported == 10 and np.all(s.work == 1)
    assert np.array_equal(part(50, "participation.rate=1.0").select(0).selected, np.arange(50))


def test_availability_frequencies_match_beta_draws():
    n, steps = 200, 1500
    p = part(n, "participation.kind='availability'", "participation.rate=1.0",
             "participation.avail_a=2", "participation.avail_b=3")
    a = p.availabilities()
    assert abs(a.mean() - 0.4) < 0.05          # Beta(2, 3) has mean 0.4
    hits = np.zeros(n)
    for t in range(steps):
        hits[p.select(t).selected] += 1
    freq = hits / steps
    # rate 1: every available client is selected, so each client's frequency estimates a_k
    se = np.sqrt(a * (1 - a) / steps)
    assert np.mean(np.abs(freq - a) < 4 * se + 1e-9) > 0.99
    assert np.corrcoef(freq, a)[0, 1] > 0.98


def test_availability_caps_at_rate_and_two_tier():
    n, steps = 400, 400
    p = part(n, "participation.kind='availability'", "participation.rate=0.1", "participation.rare_frac=0.25",
             "participation.rare_avail=0.05", "participation.common_avail=0.8")
    a = p.availabilities()
    rare = a == 0.05
    assert abs(rare.mean() - 0.25) < 0.06 and set(np.unique(a)) == {0.05, 0.8}
    hits = np.zeros(n)
    for t in range(steps):
        s = p.select(t)
        assert s.n_selected == 40            # plenty available: exactly round(q N)
        hits[s.selected] += 1
    # selection probability is proportional to availability: rare / common ~ 0.05 / 0.8
    ratio = hits[rare].mean() / hits[~rare].mean()
    assert 0.03 < ratio < 0.1
    scarce = part(100, "participation.kind='availability'", "participation.rate=0.5",
                  "participation.rare_frac=1.0", "participation.rare_avail=0.1")
    counts = [scarce.select(t).n_selected for t in range(300)]
    assert abs(np.mean(counts) - 10) < 1.0    # fewer than 50 available: all of them (~ N a = 10)


def test_dropout_rate_matches_and_correlated_dropout_hits_slow_clients():
    n, steps, d = 300, 600, 0.2
    p = part(n, "participation.rate=0.2", f"participation.dropout={d}")
    sel = rep = 0
    for t in range(steps):
        s = p.select(t)
        sel += s.n_selected
        rep += s.n_reported
    rate = 1 - rep / sel
    assert abs(rate - d) < 4 * np.sqrt(d * (1 - d) / sel)
    pc = part(n, "participation.rate=0.2", f"participation.dropout={d}", "participation.dropout_corr=1.0",
              "participation.speed_sigma=0.5")
    s_k = pc.speeds()
    dropped = np.zeros(n)
    chosen = np.zeros(n)
    for t in range(steps):
        s = pc.select(t)
        chosen[s.selected] += 1
        dropped[s.selected[~s.reported]] += 1
    overall = dropped.sum() / chosen.sum()
    assert abs(overall - pc.dropout_probs().mean()) < 0.02 and abs(overall - d) < 0.04
    slow = s_k < np.median(s_k)
    assert dropped[slow].sum() / chosen[slow].sum() > 1.5 * dropped[~slow].sum() / chosen[~slow].sum()
    with pytest.raises(ConfigError, match="speed_sigma"):
        load_config(None, ["participation.dropout=0.1", "participation.dropout_corr=1.0"])


def test_stragglers_work_and_policies():
    p = part(100, "participation.rate=0.5", "participation.speed_sigma=0.8", "participation.deadline=1.0")
    s = p.select(0)
    expect = np.minimum(1.0, p.speeds(s.selected))
    np.testing.assert_allclose(s.work, expect)
    assert s.reported.all() and (s.work < 1).mean() > 0.3
    pd_ = part(100, "participation.rate=0.5", "participation.speed_sigma=0.8", "participation.deadline=1.0",
               "participation.straggler_policy='drop'")
    s2 = pd_.select(0)
    np.testing.assert_array_equal(s2.reported, s2.work >= 1)
    # traits are keyed by client id: the same whatever the number of clients
    np.testing.assert_array_equal(part(100, "participation.speed_sigma=0.8").speeds()[:40],
                                  part(40, "participation.speed_sigma=0.8").speeds())


def test_partial_work_mask():
    mask = torch.tensor([[True] * 10, [True] * 4 + [False] * 6, [True] * 10])
    m, steps = partial_work_mask(mask, np.array([0.35, 0.5, 1.0]))
    assert m.sum(1).tolist() == [4, 2, 10] and steps.tolist() == [0.35, 0.5, 1.0]
    m, steps = partial_work_mask(mask, np.array([0.01, 0.01, 0.01]))
    assert m.sum(1).tolist() == [1, 1, 1]


def test_straggler_partial_work_shows_in_steps_done(small_overrides):
    from raysim.reference import run_reference

    cfg = load_config(None, small_overrides + ["participation.speed_sigma=0.8", "participation.deadline=0.8",
                                               "participation.rate=1.0", "run.rounds=2", "run.steps_per_round=1"])
    _, rows, _ = run_reference(cfg, evaluate=False)
    p = build_participation(cfg.participation, cfg.data.n_clients, cfg.run.seed)
    expect = np.mean(np.minimum(1.0, 0.8 * p.speeds()))
    assert expect < 0.9
    for r in rows:
        assert r["work_done"] == pytest.approx(expect)
        assert r["n_selected"] == r["n_reported"] == 10
    full = load_config(None, small_overrides + ["participation.rate=1.0", "run.rounds=2", "run.steps_per_round=1"])
    _, rows_full, _ = run_reference(full, evaluate=False)
    assert all(r["work_done"] == 1.0 for r in rows_full)
    # dropout shows in n_reported
    drop = load_config(None, small_overrides + ["participation.rate=1.0", "participation.dropout=0.5",
                                                "run.rounds=4", "run.steps_per_round=1"])
    _, rows_d, _ = run_reference(drop, evaluate=False)
    assert sum(r["n_reported"] for r in rows_d) < sum(r["n_selected"] for r in rows_d) == 40
