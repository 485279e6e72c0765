"""Fan-out overhead: one build with its shards on two workers, then the same build unsharded, measured in one run.

    .venv/bin/python bench/fanout.py --n 40 --shards 2          # bundled model; results in bench/results/fanout.txt

Starts its own Prefect server (scripts/serve.sh: state under .state/fanout-bench, a free port) and two gpu-pool
workers, each with its own PREFSYNTH_HOME and pinned to one core ("two one-core machines"), a folder as the store. Both builds
run through the CLI (`prefsynth build --prefect`) from an empty cache, the sharded one with `--shards N --pool gpu`.
Printed: each build's wall time; each shard run's worker, start and end (from the Prefect API) and what its report
says; the fan-out's own overhead (the sharded build's wall minus its slowest shard run); and the projection of
100,000 titles on 8 workers from the measured per-shard throughput. The unsharded build uses both cores in one
engine, the two workers one core each: the same hardware in total.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".state" / "fanout-bench"
PY = ROOT / ".venv" / "bin" / "python"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(args: list[str], env: dict, log: Path) -> float:
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.run([str(PY), "-m", "prefsynth", "build", "--prefect", *args], env=env, stdout=f,
                              stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"build failed ({' '.join(args)}): see {log}")
    return time.time() - t0


def shard_runs(api: str) -> list:
    os.environ["PREFECT_API_URL"] = api
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags={"all_": ["shard"]}))
    return sorted(runs, key=lambda r: r.start_time)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="titles")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--workers", type=int, default=8, help="workers of the projection")
    ap.add_argument("--titles", type=int, default=100_000, help="titles of the projection")
    args = ap.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    from prefsynth.model import home

    for h in ("home-1", "home-2", "home-parent", "home-single"):  # each "machine" after its own `make install`
        (WORK / h).mkdir()
        (WORK / h / "models").symlink_to(home() / "models")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFSYNTH_STATE": str(WORK / "state"), "PREFECT_PORT": str(port),
           "PREFSYNTH_WORKERS": " ", "PREFECT_WORKER_QUERY_SECONDS": "1"}  # " ": serve.sh starts no worker
    env.pop("PREFECT_API_URL", None)
    t0 = time.time()
    subprocess.run(["bash", str(ROOT / "scripts" / "serve.sh")], env=env, check=True, capture_output=True)
    serve_s = time.time() - t0  # server, pools, deployments, the zombie automation
    env["PREFECT_API_URL"] = api
    # Two "machines" of one core each (this box's cores split between them): two engines on the same cores would
    # measure oversubscription (measured: 9-16 tok/s each), not the fan-out.
    cores = sorted(os.sched_getaffinity(0))
    workers = [subprocess.Popen(["taskset", "-c", str(cores[i % len(cores)]), "bash",
                                 str(ROOT / "scripts" / "worker.sh"), "gpu"],
                                env={**env, "PREFSYNTH_HOME": str(WORK / f"home-{i + 1}"),
                                     "PREFSYNTH_WORKER_NAME": f"gpu-{i + 1}",
                                     "VLLM_CPU_OMP_THREADS_BIND": str(cores[i % len(cores)])},
                                stdout=(WORK / f"worker-{i + 1}.log").open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True) for i in range(2)]
    try:
        time.sleep(8)  # the workers register
        store = WORK / "store"
        common = ["--n", str(args.n)]
        # The parent's own cache must be empty too, or it would find the reviews without any shard.
        sharded = build([*common, "--shards", str(args.shards), "--pool", "gpu", "--generate.store", f"file://{store}",
                         "--out", str(WORK / "out-sharded"), "--cache", str(WORK / "parent-cache")],
                        {**env, "PREFSYNTH_HOME": str(WORK / "home-parent")}, WORK / "build-sharded.log")
        runs = shard_runs(api)
        single = build([*common, "--out", str(WORK / "out-single"), "--cache", str(WORK / "single-cache")],
                       {**env, "PREFSYNTH_HOME": str(WORK / "home-single")}, WORK / "build-single.log")
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGKILL)
        subprocess.run(["bash", str(ROOT / "scripts" / "stop.sh")], env=env, capture_output=True)

    reports = {r["run_id"]: r for r in (json.loads(p.read_text()) for p in (store / "reports").glob("*.json"))}
    same = all((WORK / "out-sharded" / c).is_dir() and
               sorted(p.read_bytes() for p in (WORK / "out-sharded" / c).rglob("*.parquet")) ==
               sorted(p.read_bytes() for p in (WORK / "out-single" / c).rglob("*.parquet")) for c in ("paired",))
    lines = [f"fan-out: {args.n} titles, bundled model, {args.shards} shards on 2 gpu-pool workers (one machine, "
             f"each worker pinned to 1 of its {os.cpu_count()} CPUs, different PREFSYNTH_HOME), store file://; "
             f"{time.strftime('%Y-%m-%d %H:%M')}",
             f"make serve equivalent (server, pools, deployments, automation; no worker): {serve_s:.1f} s", ""]
    walls = []
    for r in runs:
        rep = reports.get(str(r.id), {})
        wall = (r.end_time - r.start_time).total_seconds()
        walls.append(wall)
        rate = rep.get("generated", 0) / rep["generate_seconds"] if rep.get("generate_seconds") else 0
        lines.append(f"  {r.name}: {r.labels.get('prefect.worker.name')} {r.state.type.value} "
                     f"{r.start_time:%H:%M:%S}->{r.end_time:%H:%M:%S} ({wall:.1f} s); {rep.get('generated', 0):.0f} "
                     f"reviews in {rep.get('generate_seconds', 0):.1f} s of generation ({rate:.2f}/s), "
                     f"judged {rep.get('judged', 0):.0f}")
    slowest = max(walls)
    gen = list(reports.values())
    reviews = sum(r["generated"] for r in gen)
    per_worker = reviews / sum(r["finished"] - r["started"] for r in gen)  # reviews/s of one worker's shard run
    startup = sum(walls) / len(walls) - sum(r["finished"] - r["started"] for r in gen) / len(gen)
    engine = sum(r["engine_seconds"] for r in gen) / len(gen)
    overhead = sharded - slowest
    lines += ["", f"sharded build wall {sharded:.1f} s; slowest shard run {slowest:.1f} s -> fan-out overhead "
                  f"{overhead:.1f} s: the build's own start, collect, its reading rounds, build and write, and "
                  f"waiting for workers to poll",
              f"per shard run: flow-run start {startup:.1f} s before its code runs, engine start {engine:.1f} s "
              f"(one core each)",
              f"unsharded build wall {single:.1f} s (same titles, empty cache, in this process's engine)",
              f"datasets identical (paired parquet files byte for byte): {'yes' if same else 'NO'}", ""]
    per_title = reviews / args.n
    total = args.titles * per_title
    fixed = overhead + startup
    proj = fixed + total / (args.workers * per_worker)
    lines += [f"projection: {args.titles:,} titles x {per_title:.2f} reviews per title (this run's rounds) = "
              f"{total:,.0f} reviews, {args.workers} shards on {args.workers} workers; per worker {per_worker:.3f} "
              f"reviews/s (measured here: a shard run's reviews over its whole run, engine start included, one "
              f"core per worker)",
              f"  on {args.workers} workers like these: {proj / 3600:.1f} h (= overhead + flow-run start + reviews / "
              f"({args.workers} x per-worker rate))",
              f"  a GPU worker's rate is not measured here (no GPU): with R reviews/s per worker the same formula "
              f"gives {fixed:.0f} s + {total:,.0f} / ({args.workers} R) s"]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / "fanout.txt"
    out.write_text(text + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
