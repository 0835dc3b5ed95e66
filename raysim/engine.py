"""The compute cores of the simulator, with no Ray in them.

* :class:`ClientCohort` holds the data of a cohort of virtual clients for the whole run and
  trains any subset of them in one vectorised pass. The Ray ``ClientActor`` wraps it.
* :class:`ServerCore` owns the global state, aggregates the cohorts' partial sums, applies
  the server update (density enforcement included), evaluates and checkpoints. The Ray
  ``ServerActor`` wraps it.

The single-process reference (``raysim.reference``) drives the same two classes directly,
which is what makes the engine/reference benchmark an honest measure of the Ray overhead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raysim.algorithms import Algorithm, Partial, Schedule, StepContext, aggregate, build_algorithm
from raysim.algorithms.base import make_schedule
from raysim.config import Config
from raysim.data import Federation, build_federation, stack_clients
from raysim.metrics import soft_iou, support_metrics
from raysim.models import Model, model_for


@dataclass
class Components:
    fed: Federation
    model: Model
    schedule: Schedule
    algo: Algorithm


def build_components(cfg: Config) -> Components:
    fed = build_federation(cfg.data, cfg.run.seed, cfg.partition)
    model = model_for(cfg, fed)   # the user's nn.Module ([model] module) or the task's built-in model
    return components_on(cfg, fed, model)


def components_on(cfg: Config, fed: Federation, model: Model) -> Components:
    """A run's components on a federation and model already built (the warm pools of
    ``raysim.cluster.warm`` keep those and build only the cheap per-run schedule and algorithm)."""
    schedule = make_schedule(cfg, fed)
    return Components(fed, model, schedule, build_algorithm(cfg.algorithm, model, schedule))


class ClientCohort:
    """A cohort of virtual clients resident in one process (one client actor)."""

    def __init__(self, cfg: Config, client_ids: np.ndarray, device: str = "cpu",
                 comp: Components | None = None):
        """``comp``: components already built for ``cfg`` in this process (the in-process
        backend shares the server's), else they are built here."""
        self.cfg = cfg
        self.comp = comp if comp is not None else build_components(cfg)
        self.device = torch.device(device)
        self.ids = np.sort(np.asarray(client_ids, dtype=np.int64))
        t0 = time.perf_counter()
        self.data = stack_clients(self.comp.fed, self.ids, self.device)
        self.build_s = time.perf_counter() - t0

    @classmethod
    def sharing(cls, cfg: Config, base: "ClientCohort") -> "ClientCohort":
        """A cohort for ``cfg`` that shares ``base``'s clients and their resident data (same
        data config, other algorithm / run settings): nothing is rebuilt or copied."""
        self = cls.__new__(cls)
        self.cfg = cfg
        self.comp = components_on(cfg, base.comp.fed, base.comp.model)
        self.device = base.device
        self.ids = base.ids
        self.data = base.data
        self.build_s = 0.0
        return self

    def local_index(self, client_ids: np.ndarray) -> torch.Tensor:
        pos = np.searchsorted(self.ids, client_ids)
        if np.any(pos >= self.ids.size) or np.any(self.ids[np.minimum(pos, self.ids.size - 1)] != client_ids):
            raise KeyError("asked to train clients that this cohort does not hold")
        return torch.from_numpy(pos).to(self.device)

    def train(self, step: int, payload: dict[str, Any], client_ids: np.ndarray,
              work: np.ndarray | None = None) -> Partial | list[Partial]:
        """One step of the given clients. The cohort's data already lives on ``self.device``
        (moved once, at construction); the algorithm moves the payload there; the result
        always comes back as host (CPU) numpy arrays, ready to be sent to the server.

        More than ``cluster.max_batch_clients`` selected clients are trained in several
        vectorised passes, which bounds the step's working memory (mini-batches, per-client
        gradients); the result is then a list of partials, one per pass, which the server
        aggregates like partials from more actors (the same sums up to float rounding).
        """
        ctx = StepContext(self.cfg.run.seed, step, self.comp.schedule)
        idx = self.local_index(np.asarray(client_ids))
        algo = self.comp.algo
        size = getattr(self.cfg.cluster, "max_batch_clients", None) or len(idx)
        if len(idx) <= size:
            return _to_host(algo.client_update(payload, self.data, idx, ctx, work))
        parts = [_to_host(algo.client_update(payload, self.data, idx[a: a + size], ctx,
                                             None if work is None else work[a: a + size]))
                 for a in range(0, len(idx), size)]
        total = sum(p.compute_s for p in parts)
        for p in parts:
            p.compute_s = total        # the actor's compute time (aggregate() takes the max)
        return parts

    def job(self, step: int, payload: dict[str, Any], client_ids: np.ndarray, work: np.ndarray | None) -> tuple:
        """The arguments of this cohort's ``client_update`` for one step (for ``train_many``)."""
        ctx = StepContext(self.cfg.run.seed, step, self.comp.schedule)
        return (self.comp.algo, payload, self.data, self.local_index(np.asarray(client_ids)), ctx, work)

    def evaluate(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-client fairness scores of a deployed model on the clients' held-out data."""
        th = torch.as_tensor(theta, device=self.device)
        d = self.data
        mask = torch.arange(d.x_hold.shape[1], device=self.device)[None, :] < d.n_hold[:, None]
        with torch.no_grad():
            s = self.comp.model.client_scores(th, d.x_hold, d.y_hold, mask)
        return self.ids, s.cpu().numpy()

    def evaluate_many(self, thetas: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`evaluate` of several deployed models in one vectorised pass."""
        if len(thetas) == 1:
            return [self.evaluate(thetas[0])]
        th = torch.as_tensor(np.stack(thetas), device=self.device)
        d = self.data
        model = self.comp.model
        segments = getattr(model, "client_scores_segments", None) is not None
        flat = getattr(self, "_hold_flat", None)
        if flat is None or not segments:
            mask = torch.arange(d.x_hold.shape[1], device=self.device)[None, :] < d.n_hold[:, None]
            if segments:   # the held-out samples end to end, once per cohort
                seg = torch.arange(mask.shape[0], device=self.device)[:, None].expand_as(mask)[mask]
                flat = self._hold_flat = (d.x_hold[mask], d.y_hold[mask], seg, mask.shape[0])
        with torch.no_grad():
            if segments:
                s = model.client_scores_segments(th, *flat)
            else:
                s = model.client_scores_many(th, d.x_hold, d.y_hold, mask)
        return [(self.ids, row) for row in s.cpu().numpy()]

    def info(self) -> dict[str, Any]:
        return {"n_clients": int(self.ids.size), "data_bytes": self.data.nbytes(), "build_s": self.build_s}


def train_many(steps: list[tuple[ClientCohort, int, dict[str, Any], np.ndarray, np.ndarray | None]]) -> list[Any]:
    """One step of several runs on cohorts that share their data (a warm pool's views):
    ``steps[i] = (cohort, step, payload, client ids, work)``. Runs whose algorithms share a
    ``fuse_key`` are trained together in one vectorised pass (``client_update_many``), up to
    ``cluster.max_batch_clients`` rows per pass; the others one by one (``ClientCohort.train``).
    Returns, per run, what ``ClientCohort.train`` returns, or the exception it raised (one
    failing run does not fail the others)."""
    out: list[Any] = [None] * len(steps)
    groups: dict[tuple, list[int]] = {}
    for i, (cohort, step, payload, ids, work) in enumerate(steps):
        key = cohort.comp.algo.fuse_key()
        size = getattr(cohort.cfg.cluster, "max_batch_clients", None) or len(ids)
        if key is None or len(ids) > size:
            groups.setdefault(("solo", i), []).append(i)
        else:
            groups.setdefault((key, id(cohort.data), size), []).append(i)
    for key, members in groups.items():
        if key[0] == "solo":
            out[members[0]] = _train_alone(steps[members[0]])
            continue
        size = key[2]
        chunk: list[int] = []
        rows = 0
        for i in members:
            k = len(steps[i][3])
            if chunk and rows + k > size:
                _train_fused(steps, chunk, out)
                chunk, rows = [], 0
            chunk.append(i)
            rows += k
        _train_fused(steps, chunk, out)
    return out


def _train_alone(step_args: tuple) -> Any:
    """``ClientCohort.train`` of one run of :func:`train_many`, or the exception it raised."""
    cohort, step, payload, ids, work = step_args
    try:
        return cohort.train(step, payload, ids, work)
    except Exception as exc:  # noqa: BLE001 - reported for this run only
        return exc


def _train_fused(steps: list[tuple], chunk: list[int], out: list[Any]) -> None:
    jobs = []
    for i in chunk:
        cohort, step, payload, ids, work = steps[i]
        try:
            jobs.append(cohort.job(step, payload, ids, work))
        except Exception as exc:  # noqa: BLE001
            out[i] = exc
    live = [i for i in chunk if out[i] is None]
    if not live:
        return
    try:
        parts = type(jobs[0][0]).client_update_many(jobs)
    except Exception:  # noqa: BLE001 - find the run at fault: each alone
        for i in live:
            out[i] = _train_alone(steps[i])
        return
    for i, part in zip(live, parts):
        out[i] = _to_host(part)


def _host(v: Any) -> Any:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v


def _to_host(p: Partial) -> Partial:
    """Device tensors left in a Partial (an accelerator cohort) become CPU numpy arrays."""
    p.sums = {k: _host(v) for k, v in p.sums.items()}
    for name in ("client_ids", "client_loss", "client_n", "client_steps"):
        setattr(p, name, _host(getattr(p, name)))
    if isinstance(p.weight, torch.Tensor):
        p.weight = float(p.weight)
    return p


class ServerCore:
    """The global state and everything the server does with it."""

    def __init__(self, cfg: Config, comp: Components | None = None, share: "ServerCore | None" = None):
        """``share``: a server core of the same data whose federation, model and evaluation
        sets are reused (the warm pools' server keeps one per data set); else all is built."""
        self.cfg = cfg
        if share is not None:
            comp = components_on(cfg, share.comp.fed, share.comp.model)
        self.comp = comp if comp is not None else build_components(cfg)
        c = self.comp
        self.state = c.algo.init_state(cfg.run.seed)
        if share is not None:
            self.x_test, self.y_test, self.x_val, self.y_val = share.x_test, share.y_test, share.x_val, share.y_val
        else:
            x, y = c.fed.test_set()
            self.x_test = torch.as_tensor(x)
            self.y_test = torch.as_tensor(y)
            self.x_val = self.y_val = None
            if cfg.data.val_samples > 0:  # validation split for tuning objectives, never the test set
                xv, yv = c.fed.val_set(cfg.data.val_samples)
                self.x_val, self.y_val = torch.as_tensor(xv), torch.as_tensor(yv)
        self.true_support = None
        if c.fed.true_support is not None and c.model.gated_feature_index() is not None:
            self.feature_index = c.model.gated_feature_index()
            self.true_support = c.fed.true_support
        self.step = 0
        self.cum_up = 0
        self.cum_down = 0
        self.cum_steps = 0.0
        self._prev_pi = c.algo.gate_probs(self.state)
        self._reset_round()
        self.last_round: dict[str, Any] = {}

    def _reset_round(self) -> None:
        self.r = {"bytes_up": 0, "bytes_down": 0, "n_selected": 0, "n_reported": 0, "client_s": 0.0,
                  "aggregation_s": 0.0, "loss_sum": 0.0, "loss_w": 0.0, "steps_done": 0.0, "steps": 0}

    # -- per step ----------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        return self.comp.algo.broadcast(self.state)

    def apply(self, step: int, n_selected: int, partials: list[Partial]) -> dict[str, Any]:
        """Aggregate one step's partials, update the state, return the next broadcast."""
        if step != self.step:
            raise RuntimeError(f"server at step {self.step} got an update for step {step}")
        t0 = time.perf_counter()
        algo = self.comp.algo
        # an actor that trained its clients in several passes sends a list of partials
        partials = [q for p in partials for q in (p if isinstance(p, (list, tuple)) else [p])]
        agg = aggregate(partials)
        ctx = StepContext(self.cfg.run.seed, step, self.comp.schedule)
        broadcast = self.state
        self.state = algo.server_update(broadcast, agg, ctx)
        down, up = algo.comm_bytes(broadcast, agg, n_selected)
        r = self.r
        r["bytes_down"] += down
        r["bytes_up"] += up
        r["n_selected"] += n_selected
        r["n_reported"] += agg.n_reported
        r["client_s"] += agg.compute_s
        if agg.client_loss.size:
            r["loss_sum"] += float(np.sum(agg.client_loss * agg.client_n))
            r["loss_w"] += float(np.sum(agg.client_n))
        r["steps_done"] += float(np.sum(agg.client_steps))
        r["steps"] += 1
        self.step += 1
        out = algo.broadcast(self.state)
        r["aggregation_s"] += time.perf_counter() - t0
        return out

    def end_round(self) -> dict[str, Any]:
        """Close the round: communication totals, stability (soft IoU), timings."""
        r = self.r
        self.cum_up += r["bytes_up"]
        self.cum_down += r["bytes_down"]
        self.cum_steps += r["steps_done"]
        pi = self.comp.algo.gate_probs(self.state)
        out = {"step": self.step, "n_selected": r["n_selected"], "n_reported": r["n_reported"],
               "work_done": r["steps_done"] / max(r["n_reported"], 1),
               "train_loss": r["loss_sum"] / r["loss_w"] if r["loss_w"] > 0 else float("nan"),
               "bytes_up": r["bytes_up"], "bytes_down": r["bytes_down"],
               "cum_bytes_up": self.cum_up, "cum_bytes_down": self.cum_down,
               # client compute: local mini-batch gradient steps done by the reporting clients
               "client_steps": r["steps_done"], "cum_client_steps": self.cum_steps,
               "client_compute_s": r["client_s"], "aggregation_s": r["aggregation_s"]}
        out["max_abs_weight"] = self.max_abs_weight()
        if pi is not None and self._prev_pi is not None:
            out["soft_iou"] = soft_iou(pi, self._prev_pi)
        self._prev_pi = pi
        self._reset_round()
        self.last_round = out
        return out

    def max_abs_weight(self) -> float:
        """Largest |theta| of the global state; inf when any weight, gate parameter or the dual
        variable is NaN/inf (the run loop stops such a run as diverged)."""
        st = self.state
        for key in ("phi", "lam"):
            v = st.get(key)
            if isinstance(v, torch.Tensor):
                if not bool(torch.isfinite(v).all()):
                    return float("inf")
            elif isinstance(v, float) and not math.isfinite(v):
                return float("inf")
        th = st.get("theta")
        if not isinstance(th, torch.Tensor) or th.numel() == 0:
            return 0.0
        if not bool(torch.isfinite(th).all()):
            return float("inf")
        return float(th.abs().max())

    # -- evaluation ----------------------------------------------------------------------
    def deployed(self, final: bool = False) -> np.ndarray:
        return self.comp.algo.deployed(self.state, final=final).numpy()

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        algo, model = self.comp.algo, self.comp.model
        theta = algo.deployed(self.state, final=final)
        gated = theta[: model.p]
        nz = (gated != 0).numpy()
        out: dict[str, Any] = {"nnz": int(nz.sum()), "m": algo.m, "density": float(nz.mean())}
        out.update(algo.state_metrics(self.state))
        if self.true_support is not None:
            sel = np.zeros(self.true_support.size, dtype=bool)
            sel[self.feature_index[nz]] = True
            out.update(support_metrics(sel, self.true_support))
            if self.feature_index.size != self.true_support.size:
                # several weights per feature (mc, mlc): also per weight (docs/algorithms.md section 7)
                per_w = support_metrics(nz, self.true_support[self.feature_index])
                out.update({f"{k}_weight": v for k, v in per_w.items()})
        with torch.no_grad():
            out.update(model.evaluate(theta, self.x_test, self.y_test))
            if self.x_val is not None:
                out.update({f"val_{k}": v for k, v in model.evaluate(theta, self.x_val, self.y_val).items()})
        return out

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state, "step": self.step, "cum_up": self.cum_up, "cum_down": self.cum_down,
                "cum_steps": self.cum_steps, "prev_pi": self._prev_pi}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.state = sd["state"]
        self.step = sd["step"]
        self.cum_up, self.cum_down = sd["cum_up"], sd["cum_down"]
        self.cum_steps = float(sd.get("cum_steps", 0.0))
        self._prev_pi = sd["prev_pi"]
        self._reset_round()


