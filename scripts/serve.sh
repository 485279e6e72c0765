#!/usr/bin/env bash
# `make serve`: a real Prefect server on 127.0.0.1 (SQLite under .state/), the `cpu` and `gpu` process work pools,
# every deployment of prefect.yaml, and one worker per pool, all in the background with PID files in .state/run/.
# `make stop` (scripts/stop.sh) stops exactly these. Running it again reuses what is already up and redeploys.
#
# Settings (environment): PREFECT_PORT (4200), PREFECT_HOST (127.0.0.1), PREFSYNTH_STATE (.state),
# PREFSYNTH_WORKERS ("cpu gpu": the pools that get a local worker; "cpu" leaves training runs queued).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_prefect_env.sh"
cd "$ROOT"
[[ -x "$PREFECT" ]] || { echo "error: $PREFECT not found: run \`make install\` first" >&2; exit 2; }
# Listening on every interface (PREFECT_HOST=0.0.0.0, for remote workers) is still reached locally on loopback.
URL="http://$([[ $PREFECT_HOST == 0.0.0.0 ]] && echo 127.0.0.1 || echo "$PREFECT_HOST"):$PREFECT_PORT"
export PREFECT_API_URL="$URL/api"
mkdir -p "$RUN_DIR" "$LOG_DIR" "$PREFECT_HOME"
t0=$(date +%s)

tail_log() { echo "--- last lines of $1:" >&2; tail -n "${2:-20}" "$1" >&2 || true; }

if alive "$RUN_DIR/server.pid"; then
  echo "Prefect server already running (pid $(cat "$RUN_DIR/server.pid"))"
else
  detach "$RUN_DIR/server.pid" "$LOG_DIR/server.log" \
    "$PREFECT" server start --host "$PREFECT_HOST" --port "$PREFECT_PORT" --analytics-off
  echo "starting Prefect server on $URL (pid $(cat "$RUN_DIR/server.pid"), log $LOG_DIR/server.log)"
fi
for _ in $(seq 1 360); do
  curl -sf "$URL/api/health" >/dev/null 2>&1 && break
  if ! alive "$RUN_DIR/server.pid"; then
    echo "error: the Prefect server exited (port $PREFECT_PORT taken? try PREFECT_PORT=4300 make serve)" >&2
    tail_log "$LOG_DIR/server.log"; rm -f "$RUN_DIR/server.pid"; exit 1
  fi
  sleep 0.25
done
curl -sf "$URL/api/health" >/dev/null || { echo "error: server not healthy after 90 s" >&2; tail_log "$LOG_DIR/server.log"; exit 1; }
echo "server healthy after $(( $(date +%s) - t0 )) s"

for pool in cpu gpu; do
  # One CLI call per pool (each costs seconds): create, and accept "already exists" from an earlier `make serve`.
  if out="$("$PREFECT" work-pool create "$pool" --type process 2>&1)"; then
    echo "created work pool $pool (process)"
  elif ! grep -q "already exists" <<<"$out"; then
    echo "error: cannot create work pool $pool: $out" >&2; exit 1
  fi
done

# The training deployments need flows/train.py; deploy the builds alone rather than nothing when it is missing.
deploy_log="$LOG_DIR/deploy.log"
if [[ -f flows/train.py ]]; then
  names=(--all)
else
  names=(-n build-dataset/paired -n build-dataset/unpaired -n build-dataset/refresh -n generate-shard/cpu -n generate-shard/gpu)
  echo "warning: flows/train.py not found: train/dpo and train/kto not deployed (builds will skip the hand-off)" >&2
fi
# PREFSYNTH_ROOT unset here keeps prefect.yaml's "{{ $PREFSYNTH_ROOT }}" a placeholder in the deployments, filled
# in by each worker from its own checkout (machines need not share one path).
if ! env -u PREFSYNTH_ROOT "$PREFECT" --no-prompt deploy "${names[@]}" >"$deploy_log" 2>&1; then
  echo "error: prefect deploy failed" >&2; tail_log "$deploy_log" 40; exit 1
fi
grep -o "Deployment '[^']*' successfully created" "$deploy_log" | sed "s/^Deployment '\(.*\)' successfully created/deployed \1/"

# Runs of a dead worker become Crashed when their heartbeats stop (Prefect's zombie detection).
"$PY" flows/automations.py || { echo "error: cannot create the zombie-run automation" >&2; exit 1; }

for pool in ${PREFSYNTH_WORKERS:-cpu gpu}; do
  if alive "$RUN_DIR/worker-$pool.pid"; then
    echo "worker for pool $pool already running (pid $(cat "$RUN_DIR/worker-$pool.pid"))"
  else
    detach "$RUN_DIR/worker-$pool.pid" "$LOG_DIR/worker-$pool.log" "$ROOT/scripts/worker.sh" "$pool"
    echo "started worker for pool $pool (pid $(cat "$RUN_DIR/worker-$pool.pid"), log $LOG_DIR/worker-$pool.log)"
  fi
done
# Healthy means every local worker has registered with the server (a worker that fails to start says so here).
for pool in ${PREFSYNTH_WORKERS:-cpu gpu}; do
  for _ in $(seq 1 240); do
    curl -sf -X POST -H 'Content-Type: application/json' -d '{}' "$URL/api/work_pools/$pool/workers/filter" \
      | grep -q '"status":"ONLINE"' && break
    alive "$RUN_DIR/worker-$pool.pid" || { echo "error: worker for pool $pool exited" >&2; tail_log "$LOG_DIR/worker-$pool.log"; exit 1; }
    sleep 0.25
  done
done

cat <<MSG

Prefect is up in $(( $(date +%s) - t0 )) s.  UI: $URL   API: $URL/api
Run a build from another shell:
  export PREFECT_API_URL=$URL/api
  source .venv/bin/activate        # or call .venv/bin/prefect
  prefect deployment run build-dataset/paired --watch
Stop the server and workers: make stop
MSG
