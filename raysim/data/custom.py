"""Your own data set as a plug-in: ``data.kind = "custom"`` (docs/data.md section 5).

``data.loader`` names a function (an import string, see ``raysim.plugins``) that returns the
clients' arrays, either

* a list with one ``(x, y)`` pair per client (``x``: ``[n_k, *input_shape]``, ``y``: ``[n_k]``
  or ``[n_k, n_labels]``; numpy arrays, torch tensors or nested lists), or
* a dict ``{"clients": [...], "test": (x, y), "val": (x, y)}`` where ``test`` and ``val`` are
  optional global sets.

The function is called as ``loader(**data.loader_kwargs)``, plus ``seed`` (``run.seed``) and
``n_clients`` (``data.n_clients``) when its signature names them. It runs in every process of
a run (the driver's checks, the server actor, each client actor), so it must return the same
arrays every time for the same arguments.

``data.task`` says what ``y`` is: ``lr`` real targets, ``lg`` 0/1, ``mc`` and ``cnn`` class ids
in ``[0, data.n_classes)``, ``mlc`` a 0/1 matrix with ``data.n_labels`` columns. Every array is
checked here, and a problem is reported with the client, the field and the fix.

Each client's held-out split (fairness metrics) is a seeded ``data.holdout_frac`` of its
samples, as for real data. Without a ``test`` set, the global test set is the union of the
clients' held-out splits. ``val`` is used when ``data.val_samples > 0`` (a seeded subsample of
at most that many examples).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from raysim import rng as rngmod
from raysim.config import ConfigError
from raysim.data.federation import ClientData, Federation, split_holdout_size

TASKS = ("lr", "lg", "mc", "mlc", "cnn")

#: the last loader result of this process (the driver's checks and an in-process run share it)
_CACHE: dict[str, Any] = {}


class CustomDataError(ConfigError):
    """The loader's output is unusable (the message names the field, the client and the fix)."""


def _array(v: Any, what: str) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "cpu"):   # a torch tensor
        v = v.detach().cpu().numpy()
    try:
        a = np.asarray(v)
    except Exception as exc:  # ragged lists and the like
        raise CustomDataError(f"data.loader: {what} is not an array ({type(v).__name__}: {exc})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise CustomDataError(f"data.loader: {what} has dtype {a.dtype}; it must be numeric (a numpy array, a "
                              "torch tensor or a nested list of numbers of one shape)")
    return a


def _pair(v: Any, what: str) -> tuple[Any, Any]:
    if isinstance(v, dict):
        if set(v) != {"x", "y"}:
            raise CustomDataError(f"data.loader: {what} is a dict with keys {sorted(v)}; give an (x, y) pair or a "
                                  "dict with exactly the keys 'x' and 'y'")
        return v["x"], v["y"]
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return v[0], v[1]
    raise CustomDataError(f"data.loader: {what} is a {type(v).__name__}"
                          f"{f' of length {len(v)}' if hasattr(v, '__len__') else ''}; it must be an (x, y) pair")


def normalise(out: Any) -> tuple[list[tuple[Any, Any]], Any, Any]:
    """(clients, test or None, val or None) of a loader's return value."""
    if isinstance(out, dict):
        unknown = set(out) - {"clients", "test", "val"}
        if unknown or "clients" not in out:
            raise CustomDataError(
                f"data.loader returned a dict with keys {sorted(out)}; it must have 'clients' (a list of (x, y) "
                "pairs, one per client) and may have 'test' and 'val' ((x, y) pairs)"
                + (f"; unknown: {sorted(unknown)}" if unknown else ""))
        clients, test, val = out["clients"], out.get("test"), out.get("val")
    else:
        clients, test, val = out, None, None
    if not isinstance(clients, (list, tuple)) or len(clients) == 0:
        raise CustomDataError(f"data.loader: the clients must be a non-empty list of (x, y) pairs, one per client; "
                              f"got {type(clients).__name__}")
    if len(clients) == 2 and all(hasattr(c, "shape") and len(getattr(c, "shape")) >= 1 for c in clients) \
            and not all(isinstance(c, (tuple, list, dict)) for c in clients):
        raise CustomDataError("data.loader returned two arrays (pooled x, y?); it must return per-client data: a "
                              "list of (x, y) pairs, one per client")
    return [_pair(c, f"client {k}") for k, c in enumerate(clients)], test, val


class CustomFederation(Federation):
    """The clients of a user loader (``data.kind = "custom"``)."""

    def __init__(self, cfg: Any, seed: int):
        self.cfg = cfg
        self.seed = int(seed)
        self.task = cfg.task
        self.n_clients = int(cfg.n_clients)
        if self.task not in TASKS:
            raise CustomDataError(f"data.task = {self.task!r} is not a task for custom data; use one of {TASKS}")
        self.n_outputs = {"mc": cfg.n_classes, "cnn": cfg.n_classes, "mlc": cfg.n_labels}.get(self.task, 1)
        self._x, self._y, test, val = self._arrays()
        self.input_shape = tuple(self._x[0].shape[1:])
        self._hold: list[np.ndarray] = []
        self._train: list[np.ndarray] = []
        for k, x in enumerate(self._x):
            idx = rngmod.generator(self.seed, "custom-holdout", k).permutation(x.shape[0])
            h = self.holdout_size(x.shape[0])
            self._hold.append(np.sort(idx[:h]))
            self._train.append(np.sort(idx[h:]))
        self._sizes = np.array([t.size for t in self._train], dtype=np.int64)
        if test is not None:
            self._test = test
        elif sum(h.size for h in self._hold) > 0:
            self._test = (np.concatenate([x[h] for x, h in zip(self._x, self._hold)]),
                          np.concatenate([y[h] for y, h in zip(self._y, self._hold)]))
        else:
            raise CustomDataError("data.loader returned no 'test' set and data.holdout_frac = 0 leaves no held-out "
                                  "samples to test on; return {'clients': [...], 'test': (x, y)} or set "
                                  "data.holdout_frac > 0 (e.g. 0.2)")
        self._val = val

    # -- loading and checks -------------------------------------------------------------------
    def _arrays(self) -> tuple[list[np.ndarray], list[np.ndarray], Any, Any]:
        """The loader's arrays, checked and converted (x float32; y as the task wants it): the
        clients' x and y lists, test and val pairs (or None). The last result is kept for this
        process, so the driver's checks and an in-process run call the loader once."""
        from raysim.plugins import call_with, resolve_callable

        cfg = self.cfg
        key = json.dumps([cfg.loader, cfg.loader_kwargs, self.seed, cfg.n_clients, cfg.task, cfg.n_classes,
                          cfg.n_labels], sort_keys=True, default=str)
        if _CACHE.get("key") == key:
            return _CACHE["arrays"]
        _CACHE.clear()
        fn = resolve_callable(cfg.loader, "data.loader")
        out = call_with(fn, {"seed": self.seed, "n_clients": int(cfg.n_clients)}, dict(cfg.loader_kwargs),
                        "data.loader")
        clients, test, val = normalise(out)
        del out
        if len(clients) != cfg.n_clients:
            raise CustomDataError(
                f"data.loader returned {len(clients)} clients but data.n_clients = {cfg.n_clients}; set "
                f"data.n_clients = {len(clients)} (or let the loader take an n_clients parameter and return that many)")
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        shape: tuple[int, ...] | None = None
        for k, (x, y) in enumerate(clients):
            x, y = self._check(x, y, f"client {k}", shape)
            if x.shape[0] == 0:
                raise CustomDataError(f"data.loader: client {k} has no samples; every client needs at least one "
                                      "(leave empty clients out and lower data.n_clients)")
            shape = tuple(x.shape[1:])
            xs.append(x)
            ys.append(y)
        test = self._check(*_pair(test, "'test'"), "'test'", shape) if test is not None else None
        val = self._check(*_pair(val, "'val'"), "'val'", shape) if val is not None else None
        arrays = (xs, ys, test, val)
        _CACHE.update(key=key, arrays=arrays)
        return arrays

    def _check(self, x: Any, y: Any, what: str, shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
        x = _array(x, f"{what} x")
        y = _array(y, f"{what} y")
        if x.ndim < 2:
            raise CustomDataError(f"data.loader: {what} x has shape {x.shape}; it must be [n_samples, *input_shape] "
                                  "(e.g. [n, features], or [n, channels, height, width] for images): reshape a "
                                  "single feature with x[:, None]")
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise CustomDataError(f"data.loader: {what} x has samples of shape {tuple(x.shape[1:])} but client 0's "
                                  f"have {shape}; every sample must have the same shape")
        if y.shape[:1] != x.shape[:1]:
            raise CustomDataError(f"data.loader: {what} has {x.shape[0]} samples in x but y has shape {y.shape}; "
                                  "x and y need one row per sample")
        if not np.all(np.isfinite(x)):
            raise CustomDataError(f"data.loader: {what} x holds NaN or inf values; clean or impute them")
        return x.astype(np.float32, copy=False), self._labels(y, what)

    def _labels(self, y: np.ndarray, what: str) -> np.ndarray:
        task = self.task
        if task in ("lr", "lg") and y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if task == "mlc":
            if y.ndim != 2 or y.shape[1] != self.cfg.n_labels:
                raise CustomDataError(f"data.loader: {what} y has shape {y.shape}; data.task = 'mlc' needs a 0/1 "
                                      f"matrix [n, data.n_labels] = [n, {self.cfg.n_labels}] (set data.n_labels to "
                                      "its number of columns)")
        elif y.ndim != 1:
            raise CustomDataError(f"data.loader: {what} y has shape {y.shape}; data.task = {task!r} needs one "
                                  f"value per sample, shape [n]")
        if not np.all(np.isfinite(y)):
            raise CustomDataError(f"data.loader: {what} y holds NaN or inf values")
        if task in ("lg", "mlc"):
            if not np.all((y == 0) | (y == 1)):
                raise CustomDataError(f"data.loader: {what} y holds values other than 0 and 1 "
                                      f"(e.g. {y[(y != 0) & (y != 1)].flat[0].item()!r}); data.task = {task!r} needs 0/1 labels")
            return y.astype(np.float32)
        if task in ("mc", "cnn"):
            if not np.all(np.floor(y) == y) or y.size and (y.min() < 0 or y.max() >= self.n_outputs):
                bad = y[(np.floor(y) != y) | (y < 0) | (y >= self.n_outputs)].flat[0].item()
                raise CustomDataError(f"data.loader: {what} y holds {bad!r}; data.task = {task!r} needs class ids "
                                      f"0 .. data.n_classes - 1 = {self.n_outputs - 1} (set data.n_classes to the "
                                      "number of classes)")
            return y.astype(np.int64)
        return y.astype(np.float32)

    # -- the Federation interface -----------------------------------------------------------------
    def holdout_size(self, n_k: int) -> int:
        return split_holdout_size(self.cfg.holdout_frac, n_k)

    def client_sizes(self) -> np.ndarray:
        return self._sizes

    def client_data(self, k: int) -> ClientData:
        x, y, tr, ho = self._x[k], self._y[k], self._train[k], self._hold[k]
        return ClientData(x[tr], y[tr], x[ho], y[ho])

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        return self._test

    def val_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._val is None:
            raise CustomDataError("data.val_samples > 0 but data.loader returned no 'val' set; return "
                                  "{'clients': [...], 'val': (x, y)} or set data.val_samples = 0")
        x, y = self._val
        if x.shape[0] > n:
            idx = np.sort(rngmod.generator(self.seed, "custom-val").choice(x.shape[0], size=n, replace=False))
            return x[idx], y[idx]
        return x, y

    def label_counts(self) -> np.ndarray | None:
        if self.task in ("mc", "cnn", "lg"):
            n_lab = 2 if self.task == "lg" else self.n_outputs
            return np.stack([np.bincount(self._y[k][t].astype(np.int64), minlength=n_lab)
                             for k, t in enumerate(self._train)])
        if self.task == "mlc":
            return np.stack([self._y[k][t].sum(0) for k, t in enumerate(self._train)]).astype(np.int64)
        return None

    def label_names(self) -> list[str]:
        if self.task == "lg":
            return ["0", "1"]
        return [str(i) for i in range(self.n_outputs)] if self.task != "lr" else []

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update({"dataset": f"custom {self.cfg.loader}", "task": self.task, "input_shape": list(self.input_shape),
                    "n_outputs": int(self.n_outputs), "test_samples": int(self._test[0].shape[0])})
        return out
