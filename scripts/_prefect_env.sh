# Shared by serve.sh, worker.sh and stop.sh (sourced, not run): where things live and how to start them.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
PREFECT="${PREFECT:-$ROOT/.venv/bin/prefect}"
# Everything the local server and its workers keep (SQLite database, PID files, logs): git-ignored.
STATE="${PREFSYNTH_STATE:-$ROOT/.state}"
RUN_DIR="$STATE/run"
LOG_DIR="$STATE/logs"
PREFECT_HOST="${PREFECT_HOST:-127.0.0.1}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
# The server's SQLite database lives here; not in .state/prefect, the Makefile's PREFECT_HOME, where in-process
# runs (`make paired` without PREFECT_API_URL) keep the database of their throwaway server.
export PREFECT_HOME="$STATE/prefect-server"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
# Flow runs started by a worker load their code from this checkout (prefect.yaml's pull step reads it).
export PREFSYNTH_ROOT="$ROOT"

# alive PIDFILE: the process recorded there still runs and is a Prefect process (not a reused PID).
alive() {
  local pid
  [[ -f "$1" ]] && pid="$(cat "$1")" && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
    && ps -p "$pid" -o command= 2>/dev/null | grep -qE 'prefect|worker\.sh'
}

# detach PIDFILE LOG CMD...: run CMD in a session of its own, so that it outlives this shell and its terminal, and
# so that stop.sh can end it together with the flow-run processes it spawns (one process group), and nothing else.
detach() {
  local pidfile="$1" log="$2"
  shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$log")"
  "$PY" -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' "$@" </dev/null >>"$log" 2>&1 &
  local pid=$!
  echo "$pid" >"$pidfile"
  # Until the child has exec'd, its command line is still this script's, and a name check (alive, engine_alive)
  # would call a starting process dead: return once the command shows (or the child is gone).
  for _ in $(seq 1 200); do
    grep -qaF -- "$1" "/proc/$pid/cmdline" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
}
