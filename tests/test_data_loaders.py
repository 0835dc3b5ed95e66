"""Real-dataset loaders on tiny files written here (IDX raw and gzip, svmlight), corrupt and missing files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from raysim.config import ConfigError, load_config
from raysim.data import build_federation
from raysim.data.real import DatasetError, DatasetNotFoundError, load_dataset, preflight, read_idx


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.tobytes()


def write_idx_set(folder: Path, prefix_train: str = "train", prefix_test: str = "t10k", n_train: int = 60,
                  n_test: int = 20, classes: int = 10, gz: bool = False, side: int = 28, label_offset: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in ((prefix_train, n_train), (prefix_test, n_test)):
        y = (np.arange(n) % classes + label_offset).astype(np.uint8)
        x = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        x[:, 0, 0] = y  # a recognisable pixel
        for kind, arr in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            path = folder / f"{prefix}-{kind}{'.gz' if gz else ''}"
            data = idx_bytes(arr)
            path.write_bytes(gzip.compress(data) if gz else data)
            files[(prefix, kind)] = path
    return files


def real_cfg(tmp_path: Path, dataset: str, task: str = "mc", *extra: str):
    return load_config(None, [f"data.kind='real'", f"data.dataset='{dataset}'", f"data.task='{task}'",
                              f"data.data_dir='{tmp_path}'", "data.n_clients=5", *extra])


def fresh(cfg):
    load_dataset.cache_clear()
    return build_federation(cfg.data, cfg.run.seed, cfg.partition)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_idx_loader_raw_and_gzip(tmp_path, gz, dataset):
    write_idx_set(tmp_path / dataset, gz=gz)
    fed = fresh(real_cfg(tmp_path, dataset))
    assert fed.input_shape == (784,) and fed.n_outputs == 10
    x, y = fed.test_set()
    assert x.shape == (20, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    # the test split is the t10k files: the marked pixel matches the label
    np.testing.assert_allclose(x[:, 0] * 255, y, atol=1e-4)
    total = sum(fed.client_sizes()) + sum(fed.client_data(k).x_hold.shape[0] for k in range(5))
    assert total == 60
    d = fed.client_data(0)
    np.testing.assert_allclose(d.x[:, 0] * 255, d.y, atol=1e-4)


def test_idx_cnn_shape_and_emnist_split(tmp_path):
    write_idx_set(tmp_path / "emnist", "emnist-letters-train", "emnist-letters-test", classes=26, gz=True,
                  n_train=104, label_offset=1)
    fed = fresh(real_cfg(tmp_path, "emnist", "cnn", "data.emnist_split='letters'"))
    assert fed.input_shape == (1, 28, 28) and fed.n_outputs == 26   # labels 1..26 remapped to 0..25
    d = fed.client_data(1)
    assert d.x.shape[1:] == (1, 28, 28) and d.y.min() >= 0 and d.y.max() <= 25
    with pytest.raises(DatasetNotFoundError, match="emnist-balanced-train-images-idx3-ubyte"):
        fresh(real_cfg(tmp_path, "emnist", "mc", "data.emnist_split='balanced'"))


def test_missing_idx_names_every_file_and_where(tmp_path):
    write_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "mnist" / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError) as e:
        fresh(real_cfg(tmp_path, "mnist"))
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and "train-images-idx3-ubyte" in msg
    assert str(tmp_path / "mnist") in msg and "datasets/README.md" in msg and "IDX" in msg


def test_corrupt_idx_files(tmp_path):
    files = write_idx_set(tmp_path / "mnist")
    img = files[("train", "images-idx3-ubyte")]
    good = img.read_bytes()
    img.write_bytes(good[:-100])                                 # truncated
    with pytest.raises(DatasetError, match="truncated"):
        fresh(real_cfg(tmp_path, "mnist"))
    img.write_bytes(b"PK\x03\x04" + good[4:])                    # not IDX (a zip header)
    with pytest.raises(DatasetError, match="magic"):
        fresh(real_cfg(tmp_path, "mnist"))
    img.unlink()
    bad_gz = img.with_name(img.name + ".gz")
    bad_gz.write_bytes(gzip.compress(good)[:50])                 # broken gzip stream
    with pytest.raises(DatasetError, match="gzip"):
        fresh(real_cfg(tmp_path, "mnist"))
    bad_gz.unlink()
    img.write_bytes(good)
    lab = files[("train", "labels-idx1-ubyte")]
    lab.write_bytes(idx_bytes(np.zeros(59, dtype=np.uint8)))     # 60 images, 59 labels
    with pytest.raises(DatasetError, match="59 labels"):
        fresh(real_cfg(tmp_path, "mnist"))
    lab.write_bytes(good)                                        # images file where labels belong
    with pytest.raises(DatasetError, match="swapped"):
        read_idx(lab, 1)
    # the corrupt-file errors are config errors: the CLI prints them without a traceback
    assert issubclass(DatasetError, ConfigError)


def write_svm(path: Path, rows: list[tuple[list[int], dict[int, float]]]) -> None:
    lines = [",".join(map(str, labs)) + " " + " ".join(f"{i}:{v}" for i, v in sorted(feat.items()))
             for labs, feat in rows]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def rcv1_rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        labs = sorted({int(rng.integers(1, 6)), 33 if i % 3 == 0 else int(rng.integers(1, 6))})
        feat = {int(j): float(rng.random()) for j in rng.choice(np.arange(1, 40), size=5, replace=False)}
        feat[40 + (33 in labs)] = 1.0    # a feature telling CCAT apart
        rows.append((labs, feat))
    return rows


@pytest.mark.parametrize("gz", [False, True])
def test_svmlight_rcv1_mlc_and_lg(tmp_path, gz):
    folder = tmp_path / "rcv1"
    folder.mkdir()
    write_svm(folder / f"rcv1_train.svm{'.gz' if gz else ''}", rcv1_rows(60, 0))
    write_svm(folder / "rcv1_test.svm", rcv1_rows(30, 1))
    fed = fresh(real_cfg(tmp_path, "rcv1", "mlc", "data.max_features=20"))
    labels = {1, 2, 3, 4, 5, 33}
    assert fed.n_outputs == len(labels) and fed.input_shape == (20,)
    x, y = fed.test_set()
    assert x.shape == (30, 20) and y.shape == (30, 6) and set(np.unique(y)) <= {0.0, 1.0}
    # lg: the positive topic by numeric id, then by name through topics.txt
    fed = fresh(real_cfg(tmp_path, "rcv1", "lg", "data.positive_label='33'"))
    x, y = fed.test_set()
    assert y.shape == (30,) and y.sum() == 10   # every third test document is CCAT
    with pytest.raises(DatasetNotFoundError, match="topics.txt"):
        fresh(real_cfg(tmp_path, "rcv1", "lg"))  # CCAT by name needs the names file
    (folder / "topics.txt").write_text("1 C11\n2 C12\n3 C13\n4 C14\n5 C15\n33 CCAT\n")
    fed = fresh(real_cfg(tmp_path, "rcv1", "lg"))
    assert fed.test_set()[1].sum() == 10
    assert fed.stats()["label_names"] == ["rest", "CCAT"]


def test_svmlight_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="rcv1_train.svm"):
        fresh(real_cfg(tmp_path, "rcv1", "mlc"))
    folder = tmp_path / "rcv1"
    folder.mkdir()
    (folder / "rcv1_train.svm").write_text("1,2 3:0.5 4:zero\n")
    with pytest.raises(DatasetError, match="svmlight"):
        fresh(real_cfg(tmp_path, "rcv1", "mlc"))
    (folder / "rcv1_train.svm").unlink()
    (folder / "rcv1_train.svm.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    with pytest.raises(DatasetError):
        fresh(real_cfg(tmp_path, "rcv1", "mlc"))


def test_bundled_datasets_need_no_files(tmp_path):
    fed = fresh(real_cfg(tmp_path / "nothing-here", "digits", "cnn"))
    assert fed.input_shape == (1, 8, 8) and fed.n_outputs == 10
    x, y = fed.test_set()
    assert x.shape[1:] == (1, 8, 8) and 0 <= x.min() and x.max() <= 1
    # seeded hold-out test split: 20% of the 1,797 images, stratified, the same for the same seed
    assert abs(x.shape[0] - 0.2 * 1797) <= 10
    np.testing.assert_array_equal(np.bincount(y) >= 35, True)
    fed2 = fresh(real_cfg(tmp_path, "digits", "cnn"))
    np.testing.assert_array_equal(fed2.test_set()[1], y)
    fed3 = fresh(real_cfg(tmp_path, "digits", "cnn", "run.seed=1"))
    assert not np.array_equal(fed3.test_set()[0], x)
    m = fresh(real_cfg(tmp_path, "mnist-5k", "mc"))
    assert m.input_shape == (784,) and m.test_set()[0].shape == (1000, 784)


def test_unsupported_task_dataset_pairs():
    for ds, task in (("mnist-5k", "lr"), ("digits", "mlc"), ("rcv1", "mc"), ("mnist", "lg")):
        with pytest.raises(ConfigError, match=f"data.task = '{task}'"):
            load_config(None, ["data.kind='real'", f"data.dataset='{ds}'", f"data.task='{task}'"])


def test_preflight_pins_data_dir_and_reports_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSIM_DATA_DIR", str(tmp_path / "env-dir"))
    cfg = load_config(None, ["data.kind='real'", "data.dataset='mnist'", "data.task='mc'"])
    load_dataset.cache_clear()
    with pytest.raises(DatasetNotFoundError, match="env-dir"):
        preflight(cfg)
    assert cfg.data.data_dir == str((tmp_path / "env-dir").resolve())


@pytest.mark.ray
def test_cli_prints_missing_file_error(ray_session, tmp_path, capsys):
    from raysim.cli import main

    rc = main(["run", "--no-progress", "--set", "data.kind='real'", "--set", "data.dataset='fashion-mnist'",
               "--set", "data.task='mc'", "--set", f"data.data_dir='{tmp_path}'",
               "--set", f"run.out_dir='{tmp_path / 'runs'}'"])
    err = capsys.readouterr().err
    assert rc == 2 and "raysim: error: fashion-mnist: missing file(s)" in err and "Traceback" not in err


def test_real_data_validation_split_is_taken_out_of_the_training_pool():
    """data.val_samples > 0 on real data: a seeded split of the training pool, disjoint from every
    client's data and from the test set, so tuning studies can score trials on real datasets."""
    import numpy as np

    from raysim.config import load_config
    from raysim.data import build_federation

    cfg = load_config(None, ["data.kind='real'", "data.dataset='digits'", "data.task='mc'", "data.n_clients=10",
                             "data.val_samples=200"])
    fed = build_federation(cfg.data, 0, cfg.partition)
    xv, yv = fed.val_set(200)
    assert xv.shape[0] == yv.shape[0] == 200
    used = np.concatenate([fed.pool[np.concatenate(fed.client_indices(k))] for k in range(10)])
    assert not set(fed._val_idx) & set(used)                 # no client holds a validation sample
    again = build_federation(cfg.data, 0, cfg.partition)
    np.testing.assert_array_equal(again.val_set(200)[0], xv)   # seeded
    plain = load_config(None, ["data.kind='real'", "data.dataset='digits'", "data.task='mc'", "data.n_clients=10"])
    fed0 = build_federation(plain.data, 0, plain.partition)
    assert fed0.client_sizes().sum() > fed.client_sizes().sum()   # it came out of the training pool
    with pytest.raises(Exception, match="val_samples"):
        fed0.val_set(10)
