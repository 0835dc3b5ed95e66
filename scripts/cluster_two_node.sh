#!/usr/bin/env bash
# A local two-node Ray cluster on loopback: start a head node and one worker node, submit
# `raysim run` (and a small `raysim tune` when this version has that command) with
# `ray job submit --working-dir .`, check each job's status and outputs, stop the cluster.
#
#   scripts/cluster_two_node.sh            # from the repository root, in the raysim venv
#
# Everything lives in a fresh temporary folder (Ray --temp-dir, run outputs) and on free
# ports, so other Ray instances on this machine are not disturbed. Ray 2.60 requires token
# authentication to submit jobs to a head started with `ray start`: a random token is made
# for this cluster and passed through RAY_AUTH_TOKEN (nothing is written to ~/.ray).
# Exit status: 0 when every submitted job SUCCEEDED and wrote its results.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
command -v ray >/dev/null || { echo "ray not found: activate the raysim virtualenv first" >&2; exit 2; }

BASE=$(mktemp -d /tmp/raysim-2node.XXXXXX)
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
GCS_PORT=$(free_port); DASH_PORT=$(free_port); CLIENT_PORT=$(free_port)
HEAD_AGENT_PORT=$(free_port); WORKER_AGENT_PORT=$(free_port)

export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
export RAY_AUTH_TOKEN
export RAY_ADDRESS="http://127.0.0.1:${DASH_PORT}"   # for the `ray job` commands
unset RAY_DEDUP_LOGS || true

log() { printf '\n== %s\n' "$*"; }

# Stop exactly the processes of this cluster (never `ray stop`, which stops every Ray
# instance of the user on the machine): they all carry this cluster's RAY_AUTH_TOKEN in
# their environment (head and worker daemons, dashboard, workers, job drivers).
stop_ours() {
  log "stopping the cluster (only the processes started for it)"
  local pids="" p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    grep -qas "RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN}" "/proc/$p/environ" 2>/dev/null && pids="$pids $p"
  done
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 3
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  echo "stopped $(echo $pids | wc -w) processes; logs kept in $BASE/{head,worker}"
}
trap stop_ours EXIT

log "starting the head node (gcs 127.0.0.1:${GCS_PORT}, dashboard :${DASH_PORT}, 1 CPU)"
ray start --head --node-ip-address=127.0.0.1 --port="$GCS_PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" --include-dashboard=true \
  --ray-client-server-port="$CLIENT_PORT" --dashboard-agent-listen-port="$HEAD_AGENT_PORT" \
  --temp-dir="$BASE/head" --num-cpus=1 --num-gpus=0 --disable-usage-stats >"$BASE/head.out" 2>&1 ||
  { cat "$BASE/head.out"; exit 1; }
grep -E "Ray runtime started|Local node IP" "$BASE/head.out" || true

log "starting the worker node (2 CPUs) and joining 127.0.0.1:${GCS_PORT}"
ray start --address="127.0.0.1:${GCS_PORT}" --node-ip-address=127.0.0.1 \
  --dashboard-agent-listen-port="$WORKER_AGENT_PORT" \
  --temp-dir="$BASE/worker" --num-cpus=2 --num-gpus=0 --disable-usage-stats >"$BASE/worker.out" 2>&1 ||
  { cat "$BASE/worker.out"; exit 1; }
grep -E "Ray runtime started" "$BASE/worker.out" || true

log "cluster status"
for i in $(seq 1 30); do
  n=$("$PY" - <<EOF 2>/dev/null || echo 0
import ray, logging
ray.init(address="127.0.0.1:${GCS_PORT}", logging_level=logging.ERROR, log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
EOF
)
  [ "${n:-0}" -ge 2 ] && break
  sleep 1
done
echo "alive nodes: ${n:-0}"
[ "${n:-0}" -ge 2 ] || { echo "the worker node did not join" >&2; exit 1; }

ENV_JSON='{"excludes": [".venv", ".venv-ci", "runs", "results", ".git", "*.egg-info", "datasets/cache"]}'
SMALL=(--set data.n_clients=40 --set data.p=200 --set data.test_samples=2000 --set run.rounds=15
       --set cluster.num_actors=2 --set cluster.num_cpus=1 --set cluster.server_num_cpus=1
       --set run.checkpoint_every=5 --set run.plots=false)
STATUS=0

submit() {  # submit NAME ENTRYPOINT...  -> waits, prints the tail of the logs, checks SUCCEEDED
  local name=$1; shift
  local id="raysim-${name}-$(date +%s)"
  log "ray job submit ($name): $*"
  set +e
  ray job submit --submission-id "$id" --working-dir . --runtime-env-json "$ENV_JSON" -- "$@" \
    >"$BASE/job-$name.out" 2>&1
  local rc=$?
  set -e
  tail -n 25 "$BASE/job-$name.out"
  local st
  # `ray job status` prints "Job '<id>' succeeded|failed", "... was stopped" or "Status for job ...: <STATUS>"
  st=$(ray job status "$id" 2>&1 | grep -oiE "succeeded|failed|was stopped|RUNNING|PENDING" | tail -1 |
       tr '[:lower:]' '[:upper:]' | sed 's/WAS STOPPED/STOPPED/')
  echo "job $id: submit exit status $rc, job status ${st:-unknown}"
  [ "$rc" -eq 0 ] && [ "$st" = "SUCCEEDED" ]
}

RUN_DIR="$BASE/out/run"
if submit run "$PY" -m raysim run --no-progress "${SMALL[@]}" --out "$RUN_DIR"; then
  log "checking $RUN_DIR"
  "$PY" - "$RUN_DIR" <<'EOF' || STATUS=1
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
s = json.loads((d / "summary.json").read_text())
f = s["final"]
fed = json.loads((d / "federation.json").read_text())
nodes = sorted({a.get("node", "?")[:8] for a in fed["actors"]})
server_node = (fed.get("server", {}).get("node") or "?")[:8]
print(f"summary.json: rounds={s['rounds']} n_actors={s['n_actors']} density={f['density']:.4f} "
      f"(m={s['m']}, nnz={f['nnz']}) tdr={f.get('tdr')} r2={f.get('r2'):.4f} wall={s['wall_s']:.1f}s")
print(f"server actor on node {server_node}, client actors on nodes {nodes}; metrics rows: {sum(1 for _ in open(d / 'metrics.csv')) - 1}; "
      f"checkpoints: {sorted(p.name for p in (d / 'checkpoints').glob('*.ckpt'))}")
assert f["nnz"] <= s["m"], "final model denser than m"
assert len(set(nodes) | {server_node}) == 2, "the run did not use both nodes"
assert (d / "metrics.csv").exists() and (d / "model.npz").exists()
EOF
else
  STATUS=1
fi

if "$PY" -m raysim tune --help >/dev/null 2>&1; then
  TUNE_DIR="$BASE/out/tune"
  # a small study: 3 trials of a shipped study file, on a smaller federation, one trial at a time
  if submit tune "$PY" -m raysim tune tuning/lr-ratios.toml --n-trials 3 --parallel 1 --no-progress \
      --set run.rounds=4 --set data.n_clients=200 --set cluster.clients_per_actor=100 --out "$TUNE_DIR"; then
    log "checking $TUNE_DIR"
    ls "$TUNE_DIR"
    [ -n "$(ls -A "$TUNE_DIR" 2>/dev/null)" ] || { echo "the study wrote nothing" >&2; STATUS=1; }
  else
    STATUS=1
  fi
else
  log "raysim tune is not in this version: only the run job was submitted"
fi

log "result: $([ "$STATUS" -eq 0 ] && echo OK || echo FAILED)"
exit "$STATUS"
