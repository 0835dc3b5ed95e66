"""The warm federation: client actors that keep a scenario's clients across runs, and
batched runs that advance together on them.

A cold run (``raysim.cluster.driver.RaySimulation``) starts a server actor and client actors,
builds the federation in each and throws everything away at the end; for the small runs of a
tuning study, a stress grid or a comparison that start-up is most of the wall time. Here:

* A :class:`WarmPool` is one data set resident on Ray: a :class:`PoolServer` (federation,
  model, test / validation sets) and ``n_actors`` :class:`PoolClientActor` (their clients'
  stacked data), built once. It is keyed by :func:`data_fingerprint`, the part of a config
  that determines the data and where it lives (data, partition, seed, cluster layout, and
  what the work balance reads when ``cluster.balance = "work"``). :class:`WarmFederation`
  keeps a bounded number of pools and evicts the least recently used idle one.
* A run on a pool (:class:`WarmSimulation`, the interface ``raysim.runner.run`` drives, like
  ``RaySimulation``) owns a *slot*: its own server state (a fresh ``ServerCore`` sharing the
  pool's data), its own schedule, algorithm and participation. Only that state is initialised
  per run.
* Batching: the pool's :class:`_Batcher` thread collects the round (and evaluation) requests
  of every open slot and issues them together: per communication step, **one** Ray call per
  client actor carries the payloads and selected clients of all the slots, and one server
  call aggregates all of them. Slots may be at different steps (a trial that joins later
  starts at step 0 while the others go on). Inside the actor the slots are trained one after
  another in that same call (each with exactly the computation a cold run does), so every
  random stream and every sum is that of a solo run.
* Faults: pool client actors are restarted by Ray (``cluster.max_restarts``) and rebuild
  their clients from the ids; a slot's algorithm is rebuilt from its config (kept in the
  object store), and Ray retries the lost calls, so results are unchanged. An error in one
  slot (a diverging trial, a bad value) fails that slot only, never its batch-mates.

All Ray code of raysim lives in ``raysim.cluster``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from concurrent.futures import Future
from typing import Any

import numpy as np
import ray

from raysim.cluster.actors import _device, _setup_process, get_ready
from raysim.cluster.driver import by_actor
from raysim.config import Config, ConfigError

#: most views (per-slot algorithm objects) a pool client actor caches
_VIEW_CACHE = 64


class SlotError:
    """A slot's failure inside a batched call (the other slots of the batch go on)."""

    def __init__(self, message: str):
        self.message = message

    def __repr__(self) -> str:
        return f"SlotError({self.message[:200]!r})"


def _err(exc: BaseException) -> SlotError:
    return SlotError(f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc))[-3000:])


# -- the data fingerprint ------------------------------------------------------------------------

#: cluster keys that decide where the data lives (not backend / address: those pick the cluster)
_LAYOUT = ("num_actors", "clients_per_actor", "num_cpus", "num_gpus", "server_num_cpus", "torch_threads",
           "balance", "max_restarts")


def data_fingerprint(cfg: Config) -> str:
    """Hash of everything that decides a pool: the data (data, partition, and run.seed, which
    seeds the data), the actor layout (``cluster``) and, with ``cluster.balance = "work"``, the
    participation (it decides which clients go to which actor). Two configs with the same
    fingerprint share a pool; everything else (algorithm and its hyperparameters, rounds ...)
    is per run. The work balance of a pool is computed from the config that built it (its
    algorithm's cost per client); the layout never changes results beyond float rounding."""
    d = cfg.to_toml_dict()
    key: dict[str, Any] = {"data": d["data"], "partition": d.get("partition", {}), "seed": cfg.run.seed,
                           "cluster": {k: d["cluster"].get(k) for k in _LAYOUT}, "n_actors": cfg.n_actors()}
    if d.get("model", {}).get("module"):   # a user model: the pool's runs share its federation AND its model
        key["model"] = d["model"]
    if cfg.cluster.balance == "work":
        key["participation"] = d.get("participation", {})
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pool_cpus(cfg: Config) -> float:
    return cfg.cluster.server_num_cpus + cfg.n_actors() * cfg.cluster.num_cpus


# -- the actors ----------------------------------------------------------------------------------

@ray.remote
class PoolClientActor:
    """Hosts a cohort of virtual clients for every run on its data set.

    The stacked data is built once (from the pool's base config and the client ids, as a
    restarted actor rebuilds it); each run (slot) gets a light view with its own schedule and
    algorithm, built on first use from the slot's config."""

    def __init__(self, cfg: Config, client_ids: np.ndarray):
        _setup_process(cfg.cluster.torch_threads)
        from raysim.engine import ClientCohort

        self.base = ClientCohort(cfg, client_ids, device=_device(cfg))
        self.views: OrderedDict[str, Any] = OrderedDict()

    def ready(self) -> dict[str, Any]:
        return {**self.base.info(), "pid": os.getpid(), "device": str(self.base.device),
                "node": ray.get_runtime_context().get_node_id()}

    def _view(self, key: str, cfg_box: list) -> Any:
        v = self.views.get(key)
        if v is None:
            from raysim.engine import ClientCohort

            cfg = ray.get(cfg_box[0])
            v = ClientCohort.sharing(cfg, self.base)
            self.views[key] = v
            while len(self.views) > _VIEW_CACHE:
                self.views.popitem(last=False)
        else:
            self.views.move_to_end(key)
        return v

    def train(self, entries: list[tuple], *bundles) -> list[Any]:
        """One step of several slots: ``entries[i] = (key, [cfg ref], step, client ids, work,
        b, j)``; the slot's payload is ``bundles[b][j]`` (``bundles[b]`` itself when ``j`` is
        None): the server returns the next payloads of all the slots of a step as one object,
        so a call fetches one object per server call instead of one per slot. Returns one
        result (a partial, a list of partials, or a :class:`SlotError`) per entry."""
        from raysim.engine import train_many

        out: list[Any] = [None] * len(entries)
        steps, where = [], []
        for i, (key, box, step, ids, work, b, j) in enumerate(entries):
            payload = bundles[b] if j is None else bundles[b][j]
            if isinstance(payload, SlotError):
                out[i] = payload
                continue
            try:
                steps.append((self._view(key, box), step, payload, ids, work))
                where.append(i)
            except Exception as exc:  # noqa: BLE001 - this slot fails, the batch goes on
                out[i] = _err(exc)
        # the slots' steps in one vectorised pass where their algorithms allow (FLoPS trials)
        for i, res in zip(where, train_many(steps)):
            out[i] = _err(res) if isinstance(res, BaseException) else res
        return out

    def evaluate(self, keys: list[str], thetas: list[Any]) -> list[Any]:
        """Per-client held-out scores of each slot's deployed model (``thetas[i]`` of slot
        ``keys[i]``, one object for all the slots)."""
        out: list[Any] = list(thetas)       # a SlotError stays as it is
        good = [i for i, th in enumerate(thetas) if not isinstance(th, SlotError)]
        try:   # all the slots' models in one vectorised pass
            for i, res in zip(good, self.base.evaluate_many([thetas[i] for i in good])):
                out[i] = res
        except Exception:  # noqa: BLE001 - find the slot at fault: each alone
            for i in good:
                try:
                    out[i] = self.base.evaluate(thetas[i])
                except Exception as exc:  # noqa: BLE001
                    out[i] = _err(exc)
        return out


@ray.remote
class PoolServer:
    """The server side of a pool: the data set's federation, model and evaluation sets, built
    once, and one ``ServerCore`` (global state) per open slot, reset for every new run."""

    def __init__(self, cfg: Config):
        _setup_process(cfg.cluster.torch_threads)
        from raysim.engine import ServerCore

        self.base = ServerCore(cfg)
        self.cores: dict[str, Any] = {}
        self.fed_stats = self.base.comp.fed.stats()

    def ready(self) -> dict[str, Any]:
        c = self.base.comp
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "n_clients": int(c.fed.n_clients), "federation": self.fed_stats}

    def client_sizes(self) -> np.ndarray:
        return np.asarray(self.base.comp.fed.client_sizes())

    def open(self, key: str, cfg: Config) -> dict[str, Any]:
        """A new run on this data: a fresh server state for ``cfg``; returns its facts."""
        from raysim.engine import ServerCore

        core = ServerCore(cfg, share=self.base)
        self.cores[key] = core
        sch = core.comp.schedule
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "p": core.comp.model.p,
                "P": core.comp.model.P, "m": core.comp.algo.m, "total_steps": sch.total_steps,
                "steps_per_round": sch.steps_per_round, "prune_start": sch.prune_start,
                "federation": self.fed_stats}

    def close(self, key: str) -> None:
        self.cores.pop(key, None)

    def payload(self, key: str) -> Any:
        try:
            return self.cores[key].payload()
        except Exception as exc:  # noqa: BLE001
            return _err(exc)

    def apply(self, entries: list[tuple], *outputs) -> Any:
        """Aggregate one step of several slots. ``entries[i] = (key, step, n_selected,
        [(output index, position), ...])`` names where slot i's partials are among the client
        actors' ``outputs`` (in actor order, as a cold run sends them). Returns the next
        payload of every slot, as one list (one object for the client actors to fetch)."""
        res: list[Any] = []
        for key, step, n_selected, where in entries:
            parts = [outputs[o][j] for o, j in where]
            bad = next((p for p in parts if isinstance(p, SlotError)), None)
            core = self.cores.get(key)
            if core is None:
                res.append(SlotError(f"slot {key} is not open on this server"))
            elif bad is not None:
                core.failed = bad
                res.append(bad)
            elif getattr(core, "failed", None) is not None:
                res.append(core.failed)
            else:
                try:
                    res.append(core.apply(step, n_selected, parts))
                except Exception as exc:  # noqa: BLE001
                    core.failed = _err(exc)
                    res.append(core.failed)
        return res

    def end_round(self, keys: list[str]) -> list[Any]:
        out = []
        for k in keys:
            core = self.cores.get(k)
            if core is None:
                out.append(SlotError(f"slot {k} is not open on this server"))
            elif getattr(core, "failed", None) is not None:
                out.append(core.failed)
            else:
                try:
                    out.append(core.end_round())
                except Exception as exc:  # noqa: BLE001
                    out.append(_err(exc))
        return out

    def evaluate(self, entries: list[tuple[str, bool]]) -> list[Any]:
        out = []
        for k, final in entries:
            try:
                out.append(self.cores[k].evaluate(final))
            except Exception as exc:  # noqa: BLE001
                out.append(_err(exc))
        return out

    def deployed(self, entries: list[tuple[str, bool]]) -> list[Any]:
        out = []
        for k, final in entries:
            try:
                out.append(self.cores[k].deployed(final))
            except Exception as exc:  # noqa: BLE001
                out.append(_err(exc))
        return out

    def apply_end(self, entries: list[tuple], keys: list[str], deployed: list[tuple[str, bool]],
                  *outputs) -> tuple[Any, list[Any], list[Any]]:
        """The last step of a cycle's rounds in one call (three return objects): :meth:`apply`,
        :meth:`end_round` of ``keys`` and :meth:`deployed` of ``deployed``."""
        return self.apply(entries, *outputs), self.end_round(keys), self.deployed(deployed) if deployed else []

    def state_dict(self, key: str) -> dict[str, Any]:
        return self.cores[key].state_dict()

    def load_state_dict(self, key: str, sd: dict[str, Any]) -> int:
        core = self.cores[key]
        core.load_state_dict(sd)
        return core.step


# -- the pool (driver side) ----------------------------------------------------------------------

class _Slot:
    """Driver-side state of one run on a pool."""

    def __init__(self, key: str, cfg: Config, box: list, participation: Any, total_steps: int, spr: int):
        self.key = key
        self.cfg = cfg
        self.box = box
        self.participation = participation
        self.total_steps = total_steps
        self.spr = spr
        self.step = 0
        self.payload: Any = None        # (object ref, position in it or None)
        #: the last round done diverged: the run stops there, so no round queued behind it is
        #: issued (the server keeps that round's state for the run's final model and evaluation)
        self.halted = False
        #: the run's final evaluation (after its last step): (step, the cycle's deployed models
        #: (object ref), this run's index in them, its per-actor client scores). The run's
        #: closing model and clients.csv are these: no second round trip to the actors
        self.final_eval: tuple[int, Any, int, list] | None = None


class WarmPool:
    """One data set resident on Ray (a server and its client actors) and the runs on it."""

    def __init__(self, cfg: Config, fingerprint: str):
        from raysim.cluster.balance import imbalance
        from raysim.cluster.driver import assign_clients
        from raysim.data.participation import build_participation
        from raysim.data.real import preflight

        preflight(cfg)
        self.fingerprint = fingerprint
        self.base_cfg = cfg
        cl = cfg.cluster
        t0 = time.perf_counter()
        self.server = PoolServer.options(num_cpus=cl.server_num_cpus).remote(cfg)
        n = cfg.data.n_clients
        self.work = None
        if cl.balance == "work":
            from raysim.cluster.driver import balance_work, driver_client_sizes

            part = build_participation(cfg.participation, n, cfg.run.seed)
            sizes = driver_client_sizes(cfg)
            if sizes is None:
                sizes = ray.get(self.server.client_sizes.remote())
            self.work = balance_work(cfg, part, sizes)
        self.blocks = assign_clients(n, cfg.n_actors(), self.work)
        self.imbalance = imbalance(self.work, self.blocks) if self.work is not None else None
        self.actors = [PoolClientActor.options(num_cpus=cl.num_cpus, num_gpus=cl.num_gpus,
                                               max_restarts=cl.max_restarts, max_task_retries=-1).remote(cfg, b)
                       for b in self.blocks]
        self.owner = np.empty(n, dtype=np.int64)
        for a, b in enumerate(self.blocks):
            self.owner[b] = a
        self.server_info, *self.actor_info = get_ready([self.server.ready.remote()]
                                                       + [a.ready.remote() for a in self.actors],
                                                       [self.server, *self.actors])
        self.build_s = time.perf_counter() - t0
        self.slots: dict[str, _Slot] = {}
        self.runs = 0
        self.lock = threading.Condition()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.batcher = _Batcher(self)
        self.results_thread = threading.Thread(target=self._await_results, daemon=True,
                                               name=f"raysim-warm-results-{fingerprint}")
        self.results_thread.start()
        self.closed = False
        #: an actor of the pool is gone for good (the server, or a client actor past its
        #: restarts): the federation replaces the pool for the next run
        self.broken = False

    # -- slots ----------------------------------------------------------------------------
    def open(self, cfg: Config) -> tuple[_Slot, dict[str, Any]]:
        from raysim.data.participation import build_participation

        key = uuid.uuid4().hex[:12]
        box = [ray.put(cfg)]          # in a list: Ray passes a nested ref through unresolved
        info = ray.get(self.server.open.remote(key, cfg))
        part = build_participation(cfg.participation, cfg.data.n_clients, cfg.run.seed)
        slot = _Slot(key, cfg, box, part, info["total_steps"], info["steps_per_round"])
        slot.payload = (self.server.payload.remote(key), None)
        with self.lock:
            self.slots[key] = slot
            self.runs += 1
        return slot, info

    def close_slot(self, slot: _Slot) -> None:
        with self.lock:
            self.slots.pop(slot.key, None)
            self.lock.notify_all()
        if not self.closed:
            self.server.close.remote(slot.key)   # the actors' views of it age out of their caches

    def busy(self) -> int:
        with self.lock:
            return len(self.slots)

    def shutdown(self) -> None:
        self.closed = True
        self.batcher.stop()
        # let the results thread see the calls already issued through (the evaluations of a
        # stopped run's last rounds may still run): killing actors under them makes Ray report
        # each lost call
        self.results.put(None)
        self.results_thread.join(timeout=30)
        for a in self.actors:
            ray.kill(a)
        ray.kill(self.server)

    # -- one batched cycle (called by the batcher thread) ---------------------------------
    def cycle(self, rounds: list[tuple[_Slot, Future]], evals: list[tuple[_Slot, bool, Future]]) -> None:
        """Issue the rounds and the evaluations of these slots together (one round per slot);
        the pool's results thread resolves their futures.

        A round request of a slot whose run evaluates after that round (every
        ``run.eval_every`` rounds and the last) also evaluates it in the same cycle: its
        future gets ``(row, evaluation future)`` (else ``(row, None)``); a plain evaluation
        request's future gets the metrics. Nothing here waits: the results thread resolves the
        futures, and the batcher issues the next cycle once this one's rows are in
        (``_Batcher.max_in_flight``). Ray runs one caller's calls to an actor in the order they
        were made, so every call of a cycle (its rounds, then its evaluations) runs before
        those of the next."""
        t0 = time.perf_counter()
        round_ref = metrics_ref = scores = thetas = None
        ends = {s.key: min(s.step + s.spr, s.total_steps) for s, _ in rounds}
        # evaluations: the explicit ones, then those that close a round of this cycle
        todo = [(s, final, fut) for s, final, fut in evals]
        closing: dict[str, Future] = {}
        for s, _ in rounds:
            end = ends[s.key]
            rnd = math.ceil(end / s.spr)
            if rnd % s.cfg.run.eval_every == 0 or end >= s.total_steps:
                closing[s.key] = Future()
                todo.append((s, end >= s.total_steps, closing[s.key]))
        entries_eval = [(s.key, final) for s, final, _ in todo]
        if rounds:
            n_ticks = max(ends[s.key] - s.step for s, _ in rounds)
            for k in range(n_ticks):
                active = [s for s, _ in rounds if s.step + k < ends[s.key]]
                if not active:
                    continue
                self.batcher.max_batch = max(self.batcher.max_batch, len(active))
                per_actor: dict[int, tuple[list, list, dict]] = {}
                where: list[list[tuple[int, int]]] = []
                sels = []
                for s in active:
                    step = s.step + k
                    sel = s.participation.select(step)
                    sels.append(sel)
                    w = []
                    ref, pos = s.payload
                    for a, ids, work in by_actor(self.owner, sel):
                        ents, refs, seen = per_actor.setdefault(a, ([], [], {}))
                        w.append((a, len(ents)))
                        b = seen.get(ref)
                        if b is None:
                            b = seen[ref] = len(refs)
                            refs.append(ref)
                        ents.append((s.key, s.box, step, ids, work, b, pos))
                    where.append(w)
                order = sorted(per_actor)
                index = {a: i for i, a in enumerate(order)}
                outs = [self.actors[a].train.remote(per_actor[a][0], *per_actor[a][1]) for a in order]
                entries = [(s.key, s.step + k, int(sel.n_selected), [(index[a], j) for a, j in w])
                           for s, sel, w in zip(active, sels, where)]
                if k < n_ticks - 1:
                    bundle = self.server.apply.remote(entries, *outs)
                else:   # the last step, the end of the rounds and the deployed models: one server call
                    bundle, round_ref, thetas = self.server.apply_end.options(num_returns=3).remote(
                        entries, [s.key for s, _ in rounds], entries_eval, *outs)
                for i, s in enumerate(active):
                    s.payload = (bundle, i)
        if todo:
            # issued after this cycle's rounds and before the next cycle's (Ray runs one caller's
            # calls to an actor in order), so each evaluation sees the state after its round:
            # the deployed models first (cheap; with the rounds' last step when there are rounds),
            # the client actors' scores, then the server's metrics, so each actor's next training
            # call waits behind its scoring only
            if thetas is None:
                thetas = self.server.deployed.remote(entries_eval)
            keys = [s.key for s, _, _ in todo]
            scores = [a.evaluate.remote(keys, thetas) for a in self.actors]
            metrics_ref = self.server.evaluate.remote(entries_eval)
        if round_ref is not None:
            for sl, _ in rounds:
                sl.step = ends[sl.key]     # issued: the slot's next round starts there
            self.results.put(("rounds", round_ref, rounds, ends, closing, t0))
        if todo:
            finals = [(s, s.step) if final else None for s, final, _ in todo]   # s.step: after this cycle's round
            self.results.put(("evals", metrics_ref, scores, [fut for _, _, fut in todo], set(closing.values()), t0,
                              thetas, finals))

    def _await_results(self) -> None:
        """The pool's results thread: resolves the futures of each issued cycle, in the order
        the cycles were issued: first its rounds' rows (a run gets its row and a future for the
        round's evaluation), then its evaluations (the metrics from the server, the fairness
        from the client actors' per-client scores)."""
        from raysim.metrics import fairness_from_scores
        from raysim.outcome import divergence

        while True:
            item = self.results.get()
            if item is None:
                return
            if item[0] == "rounds":
                _, round_ref, rounds, ends, closing, t0 = item
                try:
                    rows = ray.get(round_ref)
                except Exception as exc:  # noqa: BLE001 - the pool itself failed
                    self.broken = self.broken or isinstance(exc, ray.exceptions.RayActorError)
                    for _, fut in rounds:
                        fut.set_exception(exc)
                else:
                    dt = time.perf_counter() - t0
                    for (sl, fut), row in zip(rounds, rows):
                        if isinstance(row, SlotError):
                            fut.set_exception(SlotFailed(row.message))
                            continue
                        row["round"] = math.ceil(ends[sl.key] / sl.spr)
                        row["round_s"] = dt
                        # before cycle_done() lets the batcher issue the next cycle
                        sl.halted = divergence(row, sl.cfg.run.divergence_limit) is not None
                        fut.set_result((row, closing.get(sl.key)))
                finally:
                    self.batcher.cycle_done()
                continue
            _, metrics_ref, scores, futs, closing, t0, thetas, finals = item
            try:
                metrics, per_actor_scores = ray.get(metrics_ref), ray.get(scores)
            except Exception as exc:  # noqa: BLE001 - the pool itself failed
                self.broken = self.broken or isinstance(exc, ray.exceptions.RayActorError)
                for fut in futs:
                    fut.set_exception(exc)
                continue
            dt = time.perf_counter() - t0
            for i, fut in enumerate(futs):
                bad = next((x for x in [metrics[i]] + [sc[i] for sc in per_actor_scores]
                            if isinstance(x, SlotError)), None)
                if bad is not None:
                    fut.set_exception(SlotFailed(bad.message))
                    continue
                out = dict(metrics[i])
                mine = [sc[i] for sc in per_actor_scores]
                out.update(fairness_from_scores(mine))
                if finals[i] is not None:
                    sl, step = finals[i]
                    sl.final_eval = (step, thetas, i, mine)
                # an evaluation that closes a round is timed within the round (round_s holds it)
                out["evaluation_s"] = 0.0 if fut in closing else dt
                fut.set_result(out)


class SlotFailed(RuntimeError):
    """A run on a warm pool failed (its batch-mates go on); the message holds the remote error."""


class _Batcher:
    """The pool's dispatch thread: gathers the requests of the open slots and runs them as
    one cycle. It waits until every open slot has a request in (or ``linger_s`` passed since
    the first one), so the slots' steps share Ray calls; a slot busy elsewhere (writing its
    files, reporting to Optuna) joins the next cycle."""

    linger_s = 0.05
    #: cycles issued and not yet done. One: the next cycle is issued as soon as the results
    #: thread has the rows of the last one (its requests are already queued, see
    #: ``WarmSimulation.ahead``), not after the runs' threads react. Two in flight were slower
    #: on a 2-core laptop (8 lr-ratios trials of 20 rounds: 0.80 s against 0.70 s).
    max_in_flight = 1

    def __init__(self, pool: WarmPool):
        self.pool = pool
        self.cv = threading.Condition()
        self.rounds: list[tuple[_Slot, Future]] = []
        self.evals: list[tuple[_Slot, bool, Future]] = []
        self.first: float | None = None
        self.stopped = False
        self.cycles = 0
        self.max_batch = 0          # most runs one train call carried so far
        self.in_flight = 0          # cycles with rounds issued and not yet done
        self.thread = threading.Thread(target=self._loop, name=f"raysim-warm-{pool.fingerprint}", daemon=True)
        self.thread.start()

    def submit_round(self, slot: _Slot) -> Future:
        fut: Future = Future()
        with self.cv:
            self.rounds.append((slot, fut))
            self.first = self.first or time.perf_counter()
            self.cv.notify_all()
        return fut

    def submit_eval(self, slot: _Slot, final: bool) -> Future:
        fut: Future = Future()
        with self.cv:
            self.evals.append((slot, final, fut))
            self.first = self.first or time.perf_counter()
            self.cv.notify_all()
        return fut

    def cancel(self, slot: _Slot) -> None:
        """Drop the requests of ``slot`` that no cycle has issued yet (their futures are cancelled)."""
        with self.cv:
            mine = [r for r in self.rounds if r[0] is slot]
            self.rounds = [r for r in self.rounds if r[0] is not slot]
            if not (self.rounds or self.evals):
                self.first = None
            self.cv.notify_all()
        for _, fut in mine:
            fut.cancel()

    def cycle_done(self) -> None:
        """A cycle's rounds are done (called by the pool's results thread)."""
        with self.cv:
            self.in_flight -= 1
            self.cv.notify_all()

    def poke(self) -> None:
        with self.cv:
            self.cv.notify_all()

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify_all()

    def _ready(self) -> bool:
        if not (self.rounds or self.evals):
            return False
        waiting = {s.key for s, _ in self.rounds} | {s.key for s, _, _ in self.evals}
        # the open runs that still have rounds to ask for (a finished run writing its files
        # does not hold the others up)
        open_keys = {k for k, s in list(self.pool.slots.items()) if s.step < s.total_steps and not s.halted}
        return open_keys <= waiting or time.perf_counter() - (self.first or 0) >= self.linger_s

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.stopped and (not self._ready() or self.in_flight >= self.max_in_flight):
                    timeout = None
                    if self.first is not None:
                        timeout = max(1e-3, self.linger_s - (time.perf_counter() - self.first))
                    self.cv.wait(timeout)
                if self.stopped:
                    err = RuntimeError("the warm pool was shut down")
                    for _, fut in self.rounds:
                        fut.set_exception(err)
                    for _, _, fut in self.evals:
                        fut.set_exception(err)
                    return
                # one round per slot: a run with two rounds queued gets its second in the next
                # cycle; a round queued behind a diverged one is dropped unrun
                rounds, later, keys, dropped = [], [], set(), []
                for r in self.rounds:
                    if r[0].halted:
                        dropped.append(r[1])
                        continue
                    (later if r[0].key in keys else rounds).append(r)
                    keys.add(r[0].key)
                for fut in dropped:
                    fut.cancel()
                evals = self.evals
                self.rounds, self.evals = later, []
                self.first = time.perf_counter() if later else None
            if not (rounds or evals):    # all that was queued was dropped
                continue
            try:
                self.pool.cycle(rounds, evals)
                self.cycles += 1
                if rounds:
                    with self.cv:
                        self.in_flight += 1
            except Exception as exc:  # noqa: BLE001 - handed to the waiting runs
                if isinstance(exc, ray.exceptions.RayActorError):
                    self.pool.broken = True
                for _, fut in rounds:
                    if not fut.done():
                        fut.set_exception(exc)
                for _, _, fut in evals:
                    if not fut.done():
                        fut.set_exception(exc)


class WarmSimulation:
    """One run on a warm pool, with the interface ``raysim.runner.run`` drives
    (the same as ``raysim.cluster.driver.RaySimulation``)."""

    def __init__(self, pool: WarmPool, cfg: Config, release: Any = None):
        self.pool = pool
        self.cfg = cfg
        self._release = release
        self.slot, self.info = pool.open(cfg)
        self.steps_per_round = self.info["steps_per_round"]
        self.total_steps = self.info["total_steps"]
        self.participation = self.slot.participation
        self.blocks = pool.blocks
        self.imbalance = pool.imbalance
        self.actors = pool.actors
        self.actor_info = [{**a, "warm_pool": pool.fingerprint, "pool_runs": pool.runs} for a in pool.actor_info]
        self._closed = False
        self._evaluated: tuple[int, Any] | None = None
        self._step = 0                      # the step of the last round handed to the run loop
        self._next: deque[Future] = deque()  # the next rounds, queued ahead (pipelining)
        self._queued_round = 0              # the last round queued
        self._top_up(None)                  # the first rounds join the pool's next cycles at once

    @property
    def step(self) -> int:
        return self._step

    @property
    def total_rounds(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_round)

    #: rounds of a run queued ahead of the run loop: while the loop works on round r, round
    #: r+1 runs and round r+2 waits for the next cycle, which the batcher can then issue
    #: without waiting for this run's thread (8 trials of 20 rounds: 0.70 s against 0.73 s
    #: with one round ahead)
    ahead = 2

    def run_round(self) -> dict[str, Any]:
        """The next round's statistics. Pipelined: the run's next rounds are queued ahead
        (:attr:`ahead` of them, see :meth:`_top_up`), so the driver's work on this round
        (files, Optuna reports) overlaps the actors' work on the next ones; each round computes
        exactly what it would unpipelined, and the queued rounds of a run that stops (pruned,
        diverged) are discarded with its slot."""
        if not self._next:
            self._submit()
        row, ev = self._next.popleft().result()
        self._step = int(row["step"])
        # the evaluation that closes this round was issued with it (a future); evaluate() waits for it
        self._evaluated = (self._step, ev)
        self._top_up(row)
        return row

    def _submit(self) -> None:
        self._next.append(self.pool.batcher.submit_round(self.slot))
        self._queued_round += 1

    def _top_up(self, row: dict[str, Any] | None) -> None:
        """Queue rounds ahead while :meth:`_may_queue` allows it."""
        while len(self._next) < self.ahead and self._may_queue(row):
            self._submit()

    def _may_queue(self, row: dict[str, Any] | None) -> bool:
        """Queue the next round now? Only when the run loop will ask for it with nothing in
        between that needs the server state of an earlier round: not past the last round,
        not after a diverged round (the loop stops there; the pool's results thread marked
        the slot halted when the row came in), not past a checkpoint, and not when the round
        just handed over was to be evaluated and was not (the loop may still ask for that
        evaluation)."""
        cfg = self.cfg
        q = self._queued_round + 1
        if q > self.total_rounds or self.slot.halted:
            return False
        handed = math.ceil(self._step / self.steps_per_round)
        if row is not None and handed % cfg.run.eval_every == 0 and self._evaluated[1] is None:
            return False
        k = cfg.run.checkpoint_every
        # a checkpoint after round c (taken once the loop has round c) needs nothing queued past c
        return not (k and any(c % k == 0 for c in range(max(handed, 1), q)))

    def _settle(self) -> None:
        """Wait out the rounds queued ahead (their results are not used)."""
        while self._next:
            try:
                self._next.popleft().result()
            except Exception:  # noqa: BLE001 - the run is over or rewinds; the round is dropped
                pass

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        done = self._evaluated
        self._evaluated = None
        if done is not None and done[0] == self._step and done[1] is not None \
                and final == (self._step >= self.total_steps):
            return done[1].result()
        if self._next and self.slot.halted:     # the rounds queued behind a diverged one: never run
            self.pool.batcher.cancel(self.slot)
            self._settle()
        if self._next:
            raise RuntimeError("internal: an evaluation was asked for while the next round runs ahead")
        return self.pool.batcher.submit_eval(self.slot, final).result()

    def _final_eval(self) -> tuple | None:
        """The run's final evaluation when it is of the model the server holds now."""
        fe = self.slot.final_eval
        return fe if fe is not None and fe[0] == self.slot.step and not self._next else None

    def deployed(self, final: bool = True) -> np.ndarray:
        fe = self._final_eval() if final else None
        if fe is not None:   # the final model, already sent to the actors for the final evaluation
            th = ray.get(fe[1])[fe[2]]
        else:
            th = ray.get(self.pool.server.deployed.remote([(self.slot.key, final)]))[0]
        if isinstance(th, SlotError):
            raise SlotFailed(th.message)
        return th

    def client_scores(self) -> list[tuple[np.ndarray, np.ndarray]]:
        fe = self._final_eval()
        if fe is not None:   # the final evaluation's scores: the same model on the same clients
            return list(fe[3])
        thetas = self.pool.server.deployed.remote([(self.slot.key, True)])
        out = ray.get([a.evaluate.remote([self.slot.key], thetas) for a in self.pool.actors])
        bad = next((o[0] for o in out if isinstance(o[0], SlotError)), None)
        if bad is not None:
            raise SlotFailed(bad.message)
        return [o[0] for o in out]

    def state_dict(self) -> dict[str, Any]:
        if self._next:
            raise RuntimeError("internal: a checkpoint was asked for while the next round runs ahead")
        return {"server": ray.get(self.pool.server.state_dict.remote(self.slot.key)), "step": self.slot.step}

    def restore(self, sd: dict[str, Any]) -> None:
        self._settle()
        step = ray.get(self.pool.server.load_state_dict.remote(self.slot.key, sd["server"]))
        if step != sd["step"]:
            raise RuntimeError(f"checkpoint inconsistent: server at step {step}, driver at {sd['step']}")
        self.slot.step = self._step = int(sd["step"])
        self.slot.halted = False
        self.slot.final_eval = None
        self._queued_round = math.ceil(self._step / self.steps_per_round)
        self.slot.payload = (self.pool.server.payload.remote(self.slot.key), None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.pool.batcher.cancel(self.slot)   # queued rounds not yet issued are dropped unrun
        self._settle()
        self.pool.close_slot(self.slot)
        self.pool.batcher.poke()
        if self._release is not None:
            self._release(self.pool)


class WarmFederation:
    """The warm pools of this driver, keyed by :func:`data_fingerprint` (at most ``max_pools``;
    the least recently used idle pool is evicted when a new data set needs room).

    ``simulation(cfg)`` is the factory ``raysim.runner.run(..., simulation=...)`` takes: a run
    on the pool of its data, built on first use. Thread-safe: runs on several threads share it.
    """

    def __init__(self, max_pools: int = 2):
        if max_pools < 1:
            raise ValueError("max_pools must be at least 1")
        self.max_pools = max_pools
        self.pools: OrderedDict[str, WarmPool] = OrderedDict()
        self.building: dict[str, threading.Event] = {}
        self.cv = threading.Condition()
        self.built = 0
        self.build_s = 0.0      # seconds the pools built so far took to start (actors and data)
        self.evicted = 0

    def simulation(self, cfg: Config) -> WarmSimulation:
        pool = self.acquire(cfg)
        try:
            return WarmSimulation(pool, cfg, release=self._released)
        except BaseException:
            self._released(pool)
            raise

    def _released(self, pool: WarmPool) -> None:
        with self.cv:
            self.cv.notify_all()

    def acquire(self, cfg: Config) -> WarmPool:
        """The pool of ``cfg``'s data (built here when missing, after evicting idle pools so
        that it fits in the cluster's free CPUs)."""
        if cfg.cluster.backend == "local":
            raise ConfigError("cluster.backend = 'local' runs in process; it has no warm pool")
        fp = data_fingerprint(cfg)
        with self.cv:
            while True:
                if fp in self.pools and self.pools[fp].broken and self.pools[fp].busy() == 0:
                    self._evict(fp)
                if fp in self.pools:
                    self.pools.move_to_end(fp)
                    return self.pools[fp]
                if fp in self.building:
                    self.cv.wait(0.5)
                    continue
                idle = [k for k, p in self.pools.items() if p.busy() == 0]
                need = pool_cpus(cfg)
                fits = lambda: (len(self.pools) < self.max_pools  # noqa: E731
                                and float(ray.available_resources().get("CPU", 0.0)) + 1e-9 >= need)
                while idle and not fits():
                    self._evict(idle.pop(0))
                if fits() or not self.pools:
                    break
                self.cv.wait(0.5)   # every pool is busy: wait for one to go idle
            self.building[fp] = threading.Event()
        try:
            from raysim.cluster.driver import check_resources

            check_resources(cfg)
            pool = WarmPool(cfg, fp)
        finally:
            with self.cv:
                self.building.pop(fp, None)
                self.cv.notify_all()
        with self.cv:
            self.pools[fp] = pool
            self.built += 1
            self.build_s += pool.build_s
            return pool

    def _evict(self, fp: str) -> None:
        pool = self.pools.pop(fp)
        pool.shutdown()
        self.evicted += 1

    def shutdown(self) -> None:
        with self.cv:
            for fp in list(self.pools):
                self._evict(fp)
