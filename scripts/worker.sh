#!/usr/bin/env bash
# Start one Prefect worker (foreground) for a work pool: scripts/worker.sh cpu|gpu [extra `prefect worker start` flags]
#
# On a cluster, run this on every GPU machine (pool gpu) or build machine (pool cpu), from that machine's project
# checkout (after `make install`), pointed at the one Prefect server:
#   PREFECT_API_URL=http://<server>:4200/api scripts/worker.sh gpu
# Flow runs then execute in a subprocess with this checkout's .venv python, in this checkout's folder, with this
# worker's environment (HF_TOKEN, PREFSYNTH_HOME, CUDA_VISIBLE_DEVICES...). Several GPUs on one machine: one worker
# each, e.g. CUDA_VISIBLE_DEVICES=1 PREFSYNTH_WORKER_NAME=gpu1@$(hostname) scripts/worker.sh gpu
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_prefect_env.sh"
pool="${1:?usage: scripts/worker.sh <pool: cpu|gpu> [prefect worker start flags]}"
shift
export PREFECT_API_URL="${PREFECT_API_URL:-http://$PREFECT_HOST:$PREFECT_PORT/api}"
# Every flow run sends a heartbeat this often; a run whose heartbeats stop (its machine died) is marked Crashed by
# the automation `make serve` creates (flows/automations.py), and a build waiting on it submits it again.
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"
# How often the worker asks for new runs (Prefect's default, 10 s, is a long wait in front of a short run).
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-5}"
# One run at a time per worker: two builds on one machine would contend for the same generation cache (its lock
# makes the second fail), two trainings for the same GPU. PREFSYNTH_WORKER_LIMIT=N changes it.
exec "$PREFECT" worker start --pool "$pool" --type process --name "${PREFSYNTH_WORKER_NAME:-$pool@$(hostname)}" \
  --install-policy never \
  --limit "${PREFSYNTH_WORKER_LIMIT:-1}" "$@"
