"""Shared fixtures: one real local Ray instance for the whole test session."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every integration test (started once)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def small_overrides(tmp_path):
    """Overrides for a small, fast synthetic lr scenario writing into tmp_path."""
    return ["data.p=60", "data.n_clients=10", "data.n_per_client=20", "data.test_samples=500",
            "algorithm.rho=0.1", "data.rho_true=0.1", "algorithm.batch_size=10", "run.rounds=6",
            "participation.rate=0.5", "run.progress=false", "run.plots=false",
            f"run.out_dir='{tmp_path}'"]
