#!/usr/bin/env bash
# Stop exactly the processes `make serve` started: the ones whose PIDs are in .state/run/, each with the flow-run
# processes it spawned (its own process group). Workers first, so no run is picked up while the server goes.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_prefect_env.sh"
shopt -s nullglob

running() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }

# wait_gone SECONDS PID...: until no process of these groups (leaders included) is left, at most SECONDS.
wait_gone() {
  local t="$1" i p left
  shift
  for ((i = 0; i < t * 4; i++)); do
    left=0
    for p in "$@"; do running "$p" && left=1; done
    [[ $left == 0 ]] && return 0
    sleep 0.25
  done
  return 1
}

# stop_groups PID...: SIGTERM to each group: the server shuts down, flow runs in progress end as Crashed. A Prefect
# 3.7 worker takes its first interrupt as "drain" and (measured) does not exit even when idle; its second interrupt
# is its own SIGKILL, so it gets one after a short grace. Anything left of a group is killed last.
stop_groups() {
  local p
  [[ $# -gt 0 ]] || return 0
  for p in "$@"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
  wait_gone 3 "$@" && return 0
  for p in "$@"; do kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null; done
  wait_gone 3 "$@" && return 0
  for p in "$@"; do kill -KILL -- "-$p" 2>/dev/null; done
  wait_gone 2 "$@"
}

# collect GLOB...: PIDs of live processes recorded in these PID files (stale files are removed and reported).
pids=()
collect() {
  local f
  pids=()
  for f in "$@"; do
    if alive "$f"; then
      pids+=("$(cat "$f")")
      echo "stopping $(basename "$f" .pid) (pid $(cat "$f"))"
    else
      echo "$(basename "$f" .pid) was not running (stale PID file removed)"
    fi
  done
}

workers=("$RUN_DIR"/worker-*.pid)
server=("$RUN_DIR"/server.pi[d])  # a glob, so that nullglob drops it when absent
[[ ${#workers[@]} -gt 0 || ${#server[@]} -gt 0 ]] || { echo "nothing to stop (no PID files in $RUN_DIR)"; exit 0; }
collect "${workers[@]}"
stop_groups "${pids[@]}"
rm -f "${workers[@]}"
collect "${server[@]}"
stop_groups "${pids[@]}"
rm -f "${server[@]}"
echo "stopped"
