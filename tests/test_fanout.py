"""Shards on workers: the shared store behind each machine's cache, the build's wait for shard runs, and a real
fan-out: a Prefect server, two process workers of one pool with different PREFSYNTH_HOME, a shared folder as the
store, one worker killed (SIGKILL, with its flow run) in the middle of a shard."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from prefsynth import fanout
from prefsynth.cache import Store
from prefsynth.errors import UserError
from prefsynth.shared_store import Tiered, open_store
from test_orchestration import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"text": pl.Utf8}


# ------------------------------------------------------------------------------------------- the shared store


@pytest.fixture(scope="module")
def s3_bucket(free_port):
    """A local S3 server (moto, from the package registry) with one bucket; s3fs reaches it through the standard
    AWS environment variables, as it would reach S3."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket="prefsynth")
        yield "s3://prefsynth"
    finally:
        server.stop()
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(params=["file", "memory", "s3"])
def store_url(request, tmp_path):
    if request.param == "s3":
        return f"{request.getfixturevalue('s3_bucket')}/{tmp_path.name}"
    return f"file://{tmp_path / 'store'}" if request.param == "file" else f"memory://prefsynth-{tmp_path.name}"


def test_a_row_made_on_one_machine_is_found_by_another_and_not_made_again(tmp_path, store_url):
    store = store_url
    a = Tiered.open(tmp_path / "a", "generations", SCHEMA, store)
    with a.journal(fsync_seconds=0) as j:
        j.add({"key": "k1", "text": "one"})
        j.add({"key": "k2", "text": "two"})
    b = Tiered.open(tmp_path / "b", "generations", SCHEMA, store)  # another machine: its own local cache
    got = b.load({"k1", "k2", "k3"})
    assert sorted(got.get_column("key").to_list()) == ["k1", "k2"] and b.pulled == 2
    assert Store(tmp_path / "b", "generations", SCHEMA).load().height == 2  # copied into b's cache
    again = Tiered.open(tmp_path / "b", "generations", SCHEMA, store)
    again.load({"k1", "k2"})
    assert again.pulled == 0  # a local read now
    # Written twice (a shard re-run): the merge keeps one row per key.
    open_store(store, "generations", SCHEMA).append([{"key": "k1", "text": "one"}])
    assert open_store(store, "generations", SCHEMA).load().height == 2


def test_a_shard_spec_and_its_report_travel_through_the_store(store_url):
    spec = fanout.ShardSpec(["A title", "Another title"], "1/1")
    name = fanout.write_spec(store_url, spec)
    assert fanout.write_spec(store_url, spec) == name  # content-addressed: writing it twice is harmless
    assert fanout.read_spec(store_url, name) == spec
    fanout.write_report(store_url, name, "run-1", {"run_id": "run-1", "generated": 1})
    assert fanout.read_reports(store_url, name) == [{"run_id": "run-1", "generated": 1}]
    with pytest.raises(UserError, match="not found in store"):
        fanout.read_spec(store_url, "0" * 16)


def test_an_object_store_segment_that_does_not_match_its_checksum_is_skipped(tmp_path):
    store = open_store(f"memory://prefsynth-bad-{os.getpid()}", "generations", SCHEMA)
    name = store.append([{"key": "k1", "text": "one"}])
    store.fs.pipe_file(name, store.fs.cat_file(name)[:-3])  # torn
    assert store.load().height == 0 and store.quarantined == 1


def test_a_sweep_leaves_other_hosts_files_alone(tmp_path):
    """On a shared folder a pid means nothing on another machine: only this host's dead writers are compacted."""
    store = Store(tmp_path, "generations", SCHEMA)
    store.dir.mkdir(parents=True)
    line = json.dumps({"c": hashlib.sha256(json.dumps({"key": "k", "text": "t"}, sort_keys=True).encode()
                                           ).hexdigest()[:16], "r": {"key": "k", "text": "t"}})
    dead = 2**22 + 17  # above Linux's default pid_max: no such process here
    other = store.dir / f"journal-{dead}-1-otherhost.jsonl"
    mine = store.dir / f"journal-{dead}-2.jsonl"  # no host: written before shared stores, by this machine
    for p in (other, mine):
        p.write_text(line + "\n")
    store.sweep()
    assert other.exists() and not mine.exists()
    assert store.load().height == 1


# ---------------------------------------------------------------------------------------- the build's wait


def _states(**runs):
    """read_state of runs whose states follow the given sequences (the last state then stays)."""
    seen = {k: 0 for k in runs}

    def read(run_id):
        seq = runs[run_id]
        state = seq[min(seen[run_id], len(seq) - 1)]
        seen[run_id] += 1
        return state if isinstance(state, tuple) else (state, None)
    return read


def test_a_crashed_shard_run_is_submitted_again_and_a_user_error_ends_the_build():
    logs: list[str] = []
    runs = [fanout.Attempt("s1", "1/2", "r1"), fanout.Attempt("s2", "2/2", "r2")]
    read = _states(r1=["RUNNING", ("CRASHED", "no heartbeat")], r2=["RUNNING", "COMPLETED"], r3=["COMPLETED"])
    fanout.wait_all(runs, read, lambda a: "r3", pool="gpu", timeout=60, log=logs.append, sleep=lambda s: None)
    assert runs[0].run_id == "r3" and runs[0].history == ["r1"] and runs[0].tries == 2
    assert "submitted again as run r3" in logs[0]

    failed = [fanout.Attempt("s1", "1/2", "r1"), fanout.Attempt("s2", "2/2", "r2")]
    msg = "Flow run encountered an exception: prefsynth.errors.UserError: model /x not found\nmore"
    cancelled = []
    with pytest.raises(UserError, match=r"^shard 1/2: model /x not found$"):
        fanout.wait_all(failed, _states(r1=[("FAILED", msg)], r2=["SCHEDULED"]),
                        lambda a: "r9", pool="gpu", timeout=60, cancel=lambda a, s: cancelled.append((a.run_id, s)))
    assert cancelled == [("r2", "SCHEDULED")]  # the build failed: its other shard is not left in the queue

    crashing = [fanout.Attempt("s1", "1/1", "r1")]
    with pytest.raises(UserError, match="crashed 3 times"):
        fanout.wait_all(crashing, lambda r: ("CRASHED", None), lambda a: a.run_id + "'", pool="gpu", timeout=60,
                        sleep=lambda s: None)


def test_shard_runs_nobody_takes_end_the_build_after_the_timeout():
    now = [0.0]
    with pytest.raises(UserError, match=r"1/1: SCHEDULED.*no free worker of pool 'gpu'.*scripts/worker.sh gpu"):
        fanout.wait_all([fanout.Attempt("s1", "1/1", "r1")], lambda r: ("SCHEDULED", None), lambda a: "x",
                        pool="gpu", timeout=10, clock=lambda: now[0],
                        sleep=lambda s: now.__setitem__(0, now[0] + s))


# -------------------------------------------------------------------- a real fan-out on two process workers


POOL = "fanout-test"


def _deploy_shard_flow(env: dict) -> None:
    """generate-shard/<POOL> from prefect.yaml's own generate-shard/cpu entry, in a pool of its own (the session
    server's cpu worker must not take these runs)."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    entry = next(d for d in spec["deployments"] if d["entrypoint"].startswith("flows/generate_shard.py")
                 and d["name"] == "cpu")
    spec["deployments"] = [{**entry, "name": POOL, "work_pool": {"name": POOL}}]
    path = ROOT / ".state" / f"prefect-{POOL}.yaml"  # prefect deploy wants its file inside the project
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    prefect = str(ROOT / ".venv" / "bin" / "prefect")
    subprocess.run([prefect, "work-pool", "create", POOL, "--type", "process"], env=env, capture_output=True,
                   timeout=120)
    deploy_env = {k: v for k, v in env.items() if k != "PREFSYNTH_ROOT"}
    proc = subprocess.run([prefect, "--no-prompt", "deploy", "--prefect-file", str(path), "-n",
                           f"{fanout.SHARD_FLOW}/{POOL}"], env=deploy_env, cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _worker(name: str, env: dict, log: Path, **extra: str) -> subprocess.Popen:
    """A process worker of POOL in a session of its own (killing its group kills it and its flow runs)."""
    wenv = {**env, "PREFSYNTH_WORKER_NAME": name, "PREFECT_WORKER_QUERY_SECONDS": "1", **extra}
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "worker.sh"), POOL], env=wenv, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _flow_module():
    spec = importlib.util.spec_from_file_location("build_dataset_flow", ROOT / "flows" / "build_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _store_rows(store: Path) -> list[str]:
    """Every generation row the store holds, duplicates included (journals and shards read directly)."""
    keys = []
    for p in (store / "generations").glob("*.parquet"):
        keys += pl.read_parquet(p).get_column("key").to_list()
    for p in (store / "generations").glob("journal-*.jsonl"):
        keys += [json.loads(line)["r"]["key"] for line in p.read_text().splitlines() if line.strip()]
    return keys


@pytest.mark.integration
def test_shards_fan_out_to_two_workers_and_survive_one_killed(api, prefect_server, tiny_model, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter

    env = prefect_server["env"]
    _deploy_shard_flow(env)
    store = tmp_path / "shared-store"
    killed_marker = tmp_path / "killed"
    # Worker a dies with its flow run (SIGKILL to the group: the machine is gone) at its 9th journaled row: the
    # 5th review of its shard is in the store, the rest of the shard is not.
    a = _worker("worker-a", {**env, "PREFSYNTH_HOME": str(tmp_path / "home-a")}, tmp_path / "worker-a.log",
                PREFSYNTH_KILL_AT="journal.add:9:group", PREFSYNTH_KILL_ONCE=str(killed_marker))
    b = _worker("worker-b", {**env, "PREFSYNTH_HOME": str(tmp_path / "home-b")}, tmp_path / "worker-b.log")
    try:
        config = tiny_config(tiny_model, tmp_path / "sharded", tmp_path / "parent-cache", n=16)
        config["generate"]["store"] = f"file://{store}"
        t0 = time.time()
        result = _flow_module().build_dataset(config=config, shards=2, pool=POOL, shard_timeout=600)
        wall = time.time() - t0
    finally:
        for w in (a, b):
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.wait(timeout=30)
    assert killed_marker.exists(), (tmp_path / "worker-a.log").read_text()[-3000:]

    on_workers = result["stats"]["generate"]["on_workers"]
    assert on_workers["shard_runs"] == 2 and on_workers["resubmitted"] == 1
    assert result["stats"]["generate"]["generated"] == 0  # the build itself generated nothing: all from the store

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(name={"any_": [POOL]}),
                                                 flow_run_filter=FlowRunFilter(tags={"all_": ["shard"]}))
                if r.parameters["config"]["generate"]["store"] == f"file://{store}"]  # this test's runs only
    timeline = sorted(runs, key=lambda r: r.start_time or r.expected_start_time)
    print(f"fan-out wall {wall:.1f}s; shard runs:")
    for r in timeline:
        print(f"  {r.name}: {r.labels.get('prefect.worker.name')} {r.state.type.value} "
              f"{r.start_time:%H:%M:%S} -> {(r.end_time or r.start_time):%H:%M:%S}")
    states = sorted((r.labels.get("prefect.worker.name"), r.state.type.value) for r in runs)
    assert ("worker-a", "CRASHED") in states and len(runs) == 3
    assert {w for w, s in states if s == "COMPLETED"} <= {"worker-a", "worker-b"}
    assert {w for w, _ in states} == {"worker-a", "worker-b"}  # both workers ran a shard

    # The re-submitted shard resumed from what worker a had journaled to the store; no review was made twice.
    reports = [json.loads(p.read_text()) for p in (store / "reports").glob("*.json")]
    resumed = [r for r in reports if r["pulled_from_store"] > 0]
    assert len(resumed) == 1 and resumed[0]["worker"] == "worker-b"
    assert resumed[0]["pulled_from_store"] + resumed[0]["generated"] == resumed[0]["requested"] == 16
    keys = _store_rows(store)
    print(f"kill: worker a had journaled {resumed[0]['pulled_from_store']} of 16 reviews of shard "
          f"{resumed[0]['label']}; the new run generated {resumed[0]['generated']}; store rows {len(keys)}, "
          f"distinct {len(set(keys))}")
    assert len(keys) == len(set(keys)) == 32

    # Byte for byte what one unsharded build makes from scratch (its own fresh cache, no store).
    single = tiny_config(tiny_model, tmp_path / "single", tmp_path / "single-cache", n=16)
    _flow_module().build_dataset(config=single)
    assert _files(tmp_path / "sharded" / "paired") == _files(tmp_path / "single" / "paired")


@pytest.mark.integration
def test_a_shard_failing_for_a_user_error_fails_the_build_with_its_message(api, prefect_server, tiny_model,
                                                                          tmp_path):
    env = prefect_server["env"]
    _deploy_shard_flow(env)
    w = _worker("worker-c", {**env, "PREFSYNTH_HOME": str(tmp_path / "home-c")}, tmp_path / "worker-c.log")
    try:
        config = tiny_config(tiny_model, tmp_path / "out", tmp_path / "cache", n=4)
        config["generate"].update(store=f"file://{tmp_path / 'store'}", model=str(tmp_path / "no-such-model"))
        with pytest.raises(UserError, match=r"^shard [12]/2: .*no-such-model"):
            _flow_module().build_dataset(config=config, shards=2, pool=POOL, shard_timeout=300)
    finally:
        os.killpg(w.pid, signal.SIGKILL)
        w.wait(timeout=30)
