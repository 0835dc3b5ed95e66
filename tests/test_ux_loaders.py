"""Datasets where researchers already keep them: torchvision's and keras' cache layouts, read
from small files written here (plus the error that lists every layout looked for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raysim.data.real import DatasetError, DatasetNotFoundError, load_dataset
from test_data_loaders import fresh, real_cfg, write_idx_set


@pytest.fixture(autouse=True)
def _no_real_keras_cache(tmp_path, monkeypatch):
    """Keras' cache is looked for in $KERAS_HOME/datasets: point it at an empty folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    load_dataset.cache_clear()


def _check_test_split(fed, n_test: int = 20) -> None:
    x, y = fed.test_set()
    assert x.shape[0] == n_test and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x[:, 0] * 255, y, atol=1e-4)    # the marked pixel of write_idx_set


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dataset,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_raw_layout(tmp_path, gz, dataset, folder):
    root = tmp_path / "torch-root"
    write_idx_set(root / folder / "raw", gz=gz)          # what torchvision.datasets.<Name>(root) leaves
    fed = fresh(real_cfg(root, dataset))
    assert fed.input_shape == (784,) and fed.n_outputs == 10
    _check_test_split(fed)


def test_torchvision_emnist_raw_layout(tmp_path):
    root = tmp_path / "torch-root"
    write_idx_set(root / "EMNIST" / "raw", "emnist-letters-train", "emnist-letters-test", classes=26, gz=True,
                  n_train=104, label_offset=1)
    fed = fresh(real_cfg(root, "emnist", "cnn", "data.emnist_split='letters'"))
    assert fed.input_shape == (1, 28, 28) and fed.n_outputs == 26


def _write_npz(path: Path, n_train: int = 60, n_test: int = 20, **drop) -> None:
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = y
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    for k in drop:
        arrays.pop(k)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def test_keras_mnist_npz_in_data_dir(tmp_path):
    _write_npz(tmp_path / "data" / "mnist.npz")
    fed = fresh(real_cfg(tmp_path / "data", "mnist"))
    assert fed.input_shape == (784,) and fed.n_outputs == 10
    _check_test_split(fed)


def test_keras_mnist_npz_in_keras_cache(tmp_path):
    _write_npz(tmp_path / "keras-home" / "datasets" / "mnist.npz")    # ~/.keras/datasets/mnist.npz
    fed = fresh(real_cfg(tmp_path / "empty-data-dir", "mnist", "cnn"))
    assert fed.input_shape == (1, 28, 28)
    assert sum(fed.client_sizes()) + sum(fed.client_data(k).x_hold.shape[0] for k in range(5)) == 60


def test_keras_fashion_mnist_cache_layout(tmp_path):
    # keras.datasets.fashion_mnist keeps the four gzip IDX files in ~/.keras/datasets/fashion-mnist/
    write_idx_set(tmp_path / "keras-home" / "datasets" / "fashion-mnist", gz=True)
    fed = fresh(real_cfg(tmp_path / "empty-data-dir", "fashion-mnist"))
    _check_test_split(fed)


def test_keras_npz_missing_array_and_corrupt_file(tmp_path):
    _write_npz(tmp_path / "d" / "mnist.npz", y_test=None)
    with pytest.raises(DatasetError, match="lacks y_test"):
        fresh(real_cfg(tmp_path / "d", "mnist"))
    (tmp_path / "d" / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        fresh(real_cfg(tmp_path / "d", "mnist"))


def test_missing_dataset_lists_every_layout(tmp_path):
    root = tmp_path / "nothing-here"
    with pytest.raises(DatasetNotFoundError) as e:
        fresh(real_cfg(root, "mnist"))
    msg = str(e.value)
    for where in (root / "mnist", root / "MNIST" / "raw", root / "mnist.npz",
                  tmp_path / "keras-home" / "datasets" / "mnist.npz"):
        assert str(where) in msg, where
    assert "torchvision" in msg and "keras" in msg and "train-images-idx3-ubyte" in msg
    with pytest.raises(DatasetNotFoundError) as e:
        fresh(real_cfg(root, "fashion-mnist"))
    msg = str(e.value)
    for where in (root / "fashion-mnist", root / "FashionMNIST" / "raw",
                  tmp_path / "keras-home" / "datasets" / "fashion-mnist"):
        assert str(where) in msg, where


def test_partial_torchvision_layout_is_named_in_the_error(tmp_path):
    root = tmp_path / "r"
    write_idx_set(root / "MNIST" / "raw")
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError) as e:
        fresh(real_cfg(root, "mnist"))
    # the most complete layout's missing file comes first, with its folder
    assert f"missing file(s) {root / 'MNIST' / 'raw' / 't10k-labels-idx1-ubyte'}" in str(e.value)
