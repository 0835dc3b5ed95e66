"""Load balancing of clients over client actors (raysim.cluster.balance)."""

from __future__ import annotations

import numpy as np
import pytest

from raysim.cluster.balance import (client_costs, contiguous_blocks, expected_work, greedy_balance, imbalance,
                                    participation_rates)
from raysim.cluster.driver import assign_clients
from raysim.config import load_config
from raysim.data import build_federation
from raysim.data.participation import Participation, Selection, build_participation


def _check_partition(blocks, n):
    ids = np.concatenate(blocks)
    assert np.array_equal(np.sort(ids), np.arange(n))
    assert all(np.array_equal(b, np.sort(b)) for b in blocks)


def test_greedy_balance_quantity_skew():
    cfg = load_config(None, ["data.n_clients=400", "data.sigma_q=1.0", "data.p=20"])
    sizes = build_federation(cfg.data, 0).client_sizes()
    assert sizes.max() > 5 * np.median(sizes)            # a strongly skewed federation
    assert sizes.max() < sizes.sum() / 8                 # ... whose largest client fits in one actor's share
    work = sizes.astype(float)                           # uniform participation, cost n_k
    blocks = greedy_balance(work, 8)
    _check_partition(blocks, 400)
    contiguous = contiguous_blocks(400, 8)
    assert imbalance(work, blocks) < 1.02
    assert imbalance(work, contiguous) > 1.2
    assert imbalance(work, blocks) < imbalance(work, contiguous)
    # deterministic: same input, same layout
    again = greedy_balance(work.copy(), 8)
    assert all(np.array_equal(a, b) for a, b in zip(blocks, again))
    # assign_clients keeps its contiguous default and uses the balance when given work
    assert all(np.array_equal(a, b) for a, b in zip(assign_clients(400, 8), contiguous))
    assert all(np.array_equal(a, b) for a, b in zip(assign_clients(400, 8, work), blocks))


def test_equal_work_gives_equal_counts():
    blocks = greedy_balance(np.ones(103), 4)
    _check_partition(blocks, 103)
    assert sorted(b.size for b in blocks) == [25, 26, 26, 26]
    assert len(greedy_balance(np.ones(3), 8)) == 3        # never an empty actor


class _Skewed(Participation):
    """Clients 0..19 are selected every step, the others one step in ten."""

    def select(self, step):
        ids = np.arange(20)
        if step % 10 == 0:
            ids = np.arange(self.n_clients)
        return Selection(ids, np.ones(ids.size, dtype=bool), np.ones(ids.size))


def test_uneven_participation_is_balanced():
    part = _Skewed(None, 200, 0)
    rates = participation_rates(part, 200, total_steps=1000, prior_steps=0)
    assert rates[:20] == pytest.approx(1.0) and rates[20:] == pytest.approx(0.1, rel=0.02)
    work = expected_work(part, np.full(200, 30), total_steps=1000, per_step=False, batch_size=None)
    blocks = greedy_balance(work, 4)
    # the 20 frequent clients are spread over the actors, not all on the first one
    assert [int(np.sum(b < 20)) for b in blocks] == [5, 5, 5, 5]
    assert imbalance(work, blocks) < 1.01
    assert imbalance(work, contiguous_blocks(200, 4)) > 1.5


def test_costs_and_uniform_rates():
    assert np.array_equal(client_costs(np.array([5, 30, 100]), True, 25), [5, 25, 25])
    assert np.array_equal(client_costs(np.array([5, 30, 100]), False, 25), [5, 30, 100])
    cfg = load_config(None, ["data.n_clients=50", "participation.rate=0.2"])
    part = build_participation(cfg.participation, 50, 0)
    rates = participation_rates(part, 50, total_steps=200)
    assert rates.mean() == pytest.approx(0.2)
    assert rates.std() < 0.05
