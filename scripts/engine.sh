#!/usr/bin/env bash
# `make engine` / `make engine-stop`: a vLLM OpenAI-compatible server holding the model (`prefsynth engine`), in
# the background with its PID file in .state/run/engine.pid and its log in .state/logs/engine.log. Builds run with
# `--engine http://127.0.0.1:$ENGINE_PORT` then send their work there: no torch/vLLM import, no engine start per run.
#
# Settings (environment): ENGINE_PORT (8765), ENGINE_HOST (127.0.0.1), MODEL (the writer), ENGINE_ARGS (more
# `prefsynth engine` flags, e.g. "--max_num_seqs 64"), ENGINE_NAME (engine: names the PID and log files, so a second
# server can hold the judge: ENGINE_NAME=judge ENGINE_PORT=8766 MODEL=bundled), PREFSYNTH_STATE (.state).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_prefect_env.sh"
cd "$ROOT"
PORT="${ENGINE_PORT:-8765}"
HOST="${ENGINE_HOST:-127.0.0.1}"
NAME="${ENGINE_NAME:-engine}"
PIDFILE="$RUN_DIR/$NAME.pid"
LOG="$LOG_DIR/$NAME.log"
URL="http://$([[ $HOST == 0.0.0.0 ]] && echo 127.0.0.1 || echo "$HOST"):$PORT"

engine_alive() {
  local pid
  [[ -f "$PIDFILE" ]] && pid="$(cat "$PIDFILE")" && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
    && ps -p "$pid" -o command= 2>/dev/null | grep -qE 'vllm|prefsynth'
}

case "${1:-start}" in
  start)
    [[ -x "$PY" ]] || { echo "error: $PY not found: run \`make install\` first" >&2; exit 2; }
    if engine_alive; then
      echo "engine already running (pid $(cat "$PIDFILE")): $URL"; exit 0
    fi
    t0=$(date +%s)
    # shellcheck disable=SC2086 # ENGINE_ARGS is a list of flags
    detach "$PIDFILE" "$LOG" "$PY" -m prefsynth engine --host "$HOST" --port "$PORT" \
      ${MODEL:+--model "$MODEL"} ${ENGINE_ARGS:-}
    for _ in $(seq 1 720); do
      curl -sf "$URL/health" >/dev/null 2>&1 && break
      if ! engine_alive; then
        echo "error: the engine exited (port $PORT taken? try ENGINE_PORT=8766 make engine); last lines of $LOG:" >&2
        tail -n 15 "$LOG" >&2; rm -f "$PIDFILE"; exit 1
      fi
      sleep 0.25
    done
    curl -sf "$URL/health" >/dev/null || { echo "error: engine not healthy after 180 s (log: $LOG)" >&2; exit 1; }
    echo "engine ready after $(( $(date +%s) - t0 )) s (pid $(cat "$PIDFILE"), log $LOG)"
    echo "use it: make paired ENGINE=$URL   (or --engine $URL on any prefsynth build)"
    ;;
  stop)
    if ! engine_alive; then
      echo "engine was not running"; rm -f "$PIDFILE"; exit 0
    fi
    pid="$(cat "$PIDFILE")"
    # Its own session (detach): the group holds the API server and the engine process it started.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "engine stopped (pid $pid)"
    ;;
  *) echo "usage: scripts/engine.sh start|stop" >&2; exit 2 ;;
esac
