"""Orchestration: prefect.yaml's deployments on a real Prefect server, started the way `make serve` starts it.

One server per test session (`scripts/serve.sh` on a free loopback port, its own state folder, a real process
worker on the `cpu` pool and none on `gpu`), stopped with `scripts/stop.sh` at the end. A build runs through the
CLI (`prefect deployment run build-dataset/paired --watch`) on the tiny model; the incremental refresh and the
flow's own behaviours (shards, hand-off skipped, no retry of user errors) run in this process against the same
server, publishing to the loopback Hub of tests/hub (conftest's `hub` fixture). Nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from prefsynth import orchestrate
from prefsynth.errors import UserError
from tiny_model import LOOSE_FILTERS, ONE_CANDIDATE, JUDGE_ALL

ROOT = Path(__file__).resolve().parents[1]
PREFECT = ROOT / ".venv" / "bin" / "prefect"
PREFECT_YAML = ROOT / "prefect.yaml"
TITLES = [t for t in (ROOT / "data" / "titles.txt").read_text().splitlines() if t.strip()]
REPO = "tester/reviewer2-refresh"


def tiny_config(model: Path, out: Path, cache: Path, **collect) -> dict:
    """The nested `config` parameter of build-dataset for a seconds-long build on the tiny random model. The
    filters are relaxed: the tiny model writes noise, and these tests are about orchestration, not filtering."""
    return {
        "collect": {"n": 12, **collect},
        "generate": {**ONE_CANDIDATE, "model": str(model), "backend": "transformers", "max_tokens": 16,
                     "cache_dir": str(cache)},
        "build": {"out": str(out), "formats": "paired", **LOOSE_FILTERS},
        "judge": JUDGE_ALL,
    }


def deployment_spec(name: str) -> dict:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    return next(d for d in spec["deployments"] if d["name"] == name)


# ------------------------------------------------------------------------------------------- no server needed


def test_prefect_yaml_declares_the_deployments():
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    pools = {(d["entrypoint"].split(":")[1], d["name"]): d["work_pool"]["name"] for d in spec["deployments"]}
    assert pools == {("build_dataset", "paired"): "cpu", ("build_dataset", "unpaired"): "cpu",
                     ("build_dataset", "refresh"): "cpu", ("train", "dpo"): "gpu", ("train", "kto"): "gpu",
                     ("generate_shard", "gpu"): "gpu", ("generate_shard", "cpu"): "cpu"}
    refresh = deployment_spec("refresh")
    assert refresh["schedules"][0]["cron"] == "0 3 * * 1"  # weekly (README documents how to change it)
    assert refresh["parameters"]["config"]["collect"]["n"] is None  # every title of the source
    # The worker's checkout is filled in at run time, not frozen at deploy time.
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PREFSYNTH_ROOT }}"}}]


def test_shards_cover_every_title_once_in_order():
    titles = [f"t{i}" for i in range(10)]
    parts = orchestrate.shard(titles, 3)
    assert [len(p) for p in parts] == [4, 3, 3] and sum(parts, []) == titles
    assert orchestrate.shard(titles[:2], 5) == [["t0"], ["t1"]]  # never an empty shard
    with pytest.raises(UserError):
        orchestrate.shard(titles, 0)


def test_handoff_reference_is_the_hub_commit_when_published_else_the_folder():
    local = {"out": "/data/r2", "version": 3, "published": []}
    assert orchestrate.handoff_targets(local, ["paired", "unpaired"], "r2") == [
        ("train/dpo", {"mode": "dpo", "data": "/data/r2", "revision": None}, "dpo: r2 v3"),
        ("train/kto", {"mode": "kto", "data": "/data/r2", "revision": None}, "kto: r2 v3"),
    ]
    hub = {"out": "/data/r2", "version": 3, "published": [
        {"repo_id": "me/r2-paired", "revision": "a" * 40, "configs": ["paired"], "endpoint": "https://huggingface.co"},
        {"repo_id": "me/r2-unpaired", "revision": "b" * 40, "configs": ["unpaired"], "endpoint": "http://127.0.0.1:9"},
    ]}
    [(_, dpo, _), (_, kto, _)] = orchestrate.handoff_targets(hub, ["paired", "unpaired"])
    assert dpo == {"mode": "dpo", "data": "me/r2-paired", "revision": "a" * 40}
    assert kto == {"mode": "kto", "data": "me/r2-unpaired", "revision": "b" * 40, "endpoint": "http://127.0.0.1:9"}
    # The training deployment's own settings survive; the build sets only mode and dataset.
    merged = orchestrate.deep_merge({"config": {"mode": "dpo", "steps": 200, "lora": {"r": 4}}},
                                    {"config": dpo})
    assert merged == {"config": {"mode": "dpo", "steps": 200, "lora": {"r": 4}, **dpo}}


def test_run_names_say_what_is_built():
    assert orchestrate.run_name({"collect": {"n": None}, "build": {"formats": "both"}}, "refresh") == \
        "refresh: both, all titles, writer"  # the default generator
    assert orchestrate.run_name({"collect": {"n": 12}, "generate": {"model": "/tmp/tiny/"}, "build": {
        "formats": "paired"}}, "paired") == "paired: 12 titles, tiny"
    assert orchestrate.run_name({"collect": {"n": "many"}}) == "build-dataset: invalid config"
    # ...and that config fails the run in one line, as a user error (never retried, no traceback)
    with pytest.raises(UserError, match="n must be int"):
        orchestrate.pipeline_config({"collect": {"n": "many"}})
    with pytest.raises(UserError, match="unknown"):
        orchestrate.pipeline_config({"colect": {}})


# ---------------------------------------------------------------------------------------- a real Prefect server


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


@pytest.fixture(scope="session")
def paired_run(prefect_server, tiny_model, session_tmp):
    """`prefect deployment run build-dataset/paired --watch` through the CLI, as a user types it."""
    out = session_tmp / "paired-out"
    params = {"config": tiny_config(tiny_model, out, session_tmp / "paired-cache"), "train": True}
    t0 = time.time()
    proc = subprocess.run([str(PREFECT), "deployment", "run", "build-dataset/paired", "--params", json.dumps(params),
                           "--watch", "--watch-timeout", "300"], env=prefect_server["env"], capture_output=True,
                          text=True, timeout=360, cwd=session_tmp)
    wall = time.time() - t0
    print(f"deployment run build-dataset/paired --watch: {wall:.1f}s")
    flow_run_id = next(line.split("UUID:")[1].strip() for line in proc.stdout.splitlines() if "UUID:" in line)
    return {"proc": proc, "out": out, "flow_run_id": flow_run_id, "wall": wall}


@pytest.fixture(scope="session")
def unpaired_run(paired_run, prefect_server, tiny_model, session_tmp):
    """build-dataset/unpaired with a `config` that names neither formats nor train: both come from the deployment.
    Same titles, cache and folder as the paired run: every review is reused, the KTO config joins the folder."""
    config = tiny_config(tiny_model, paired_run["out"], session_tmp / "paired-cache")
    del config["build"]["formats"]
    proc = subprocess.run([str(PREFECT), "deployment", "run", "build-dataset/unpaired", "--params",
                           json.dumps({"config": config}), "--watch", "--watch-timeout", "300"],
                          env=prefect_server["env"], capture_output=True, text=True, timeout=360, cwd=session_tmp)
    flow_run_id = next(line.split("UUID:")[1].strip() for line in proc.stdout.splitlines() if "UUID:" in line)
    return {"proc": proc, "flow_run_id": flow_run_id}


@pytest.mark.integration
def test_paired_deployment_runs_through_the_cli(paired_run, api):
    import datasets

    proc = paired_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Flow run finished successfully in 'Completed'" in proc.stdout
    with _client() as client:
        fr = client.read_flow_run(paired_run["flow_run_id"])
        task_names = {t.name.rsplit("-", 1)[0] for t in client.read_task_runs(
            flow_run_filter=_by_id(fr.id))}
    assert fr.state.is_completed() and fr.work_pool_name == "cpu"
    assert fr.name == "paired: 12 titles, tiny-llama"
    assert {"collect", "generate", "judge", "build", "write"} <= task_names
    ds = datasets.load_dataset(str(paired_run["out"]), "paired")
    paired = json.loads((paired_run["out"] / "prefsynth.json").read_text())["configs"]["paired"]
    assert paired["stats"]["pairs_generated"] == 12
    # 12 titles put one in validation; if the filters drop that pair the split is empty and the card omits it.
    assert {k: v.num_rows for k, v in ds.items()} == {k: n for k, n in paired["rows"].items() if n}
    assert ds["train"].num_rows > 0 and {"prompt", "chosen", "rejected"} <= set(ds["train"].column_names)


@pytest.mark.integration
def test_run_parameters_merge_into_the_deployment_config(unpaired_run, paired_run, api):
    import datasets

    proc = unpaired_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with _client() as client:
        fr = client.read_flow_run(unpaired_run["flow_run_id"])
    assert fr.state.is_completed() and fr.name == "unpaired: 12 titles, tiny-llama"
    manifest = json.loads((paired_run["out"] / "prefsynth.json").read_text())
    assert sorted(manifest["configs"]) == ["paired", "unpaired"] and manifest["version"] == 2
    assert manifest["configs"]["unpaired"]["stats"]["pairs_generated"] == 12
    ds = datasets.load_dataset(str(paired_run["out"]), "unpaired")
    assert {"prompt", "completion", "label"} <= set(ds["train"].column_names)


def _handed_off(build_id, deployment: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    with _client() as client:
        build = client.read_flow_run(build_id)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [build.id]}))
    return build, runs


@pytest.mark.integration
def test_build_hands_off_training_to_the_gpu_pool_without_waiting(paired_run, unpaired_run, api):
    if not (ROOT / "flows" / "train.py").exists():
        pytest.skip("flows/train.py is not in this checkout: the train/* deployments cannot exist")
    for build_id, mode, version in ((paired_run["flow_run_id"], "dpo", 1), (unpaired_run["flow_run_id"], "kto", 2)):
        build, [train] = _handed_off(build_id, mode)
        assert build.state.is_completed()  # the build did not wait for training
        assert train.work_pool_name == "gpu"
        assert train.parameters["config"]["mode"] == mode
        assert train.parameters["config"]["data"] == str(paired_run["out"])
        assert train.name == f"{mode}: reviewer2 v{version}"
        # No worker serves the gpu pool here: the run waits there, untouched.
        assert train.state.type.value == "SCHEDULED", train.state


@pytest.mark.integration
def test_refresh_deployment_is_scheduled_weekly(api):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    cron = deployment_spec("refresh")["schedules"][0]["cron"]
    with _client() as client:
        dep = client.read_deployment_by_name("build-dataset/refresh")
        assert [(s.schedule.cron, s.active) for s in dep.schedules] == [(cron, True)]
        # The server's scheduler fills in upcoming runs a few seconds after a deployment changes.
        deadline, upcoming = time.time() + 60, []
        while not upcoming and time.time() < deadline:
            upcoming = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["refresh"])),
                flow_run_filter=FlowRunFilter(state={"type": {"any_": ["SCHEDULED"]}}))
            time.sleep(1)
    assert upcoming, "no scheduled refresh runs"
    starts = sorted(r.expected_start_time for r in upcoming)
    now = dt.datetime.now(dt.timezone.utc)
    assert starts[0] > now and starts[0] - now <= dt.timedelta(days=7)
    assert all((s.weekday(), s.hour, s.minute) == (0, 3, 0) for s in starts)  # Mondays 03:00 UTC


def _by_id(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter

    return FlowRunFilter(id={"any_": [flow_run_id]})


def _flow_module():
    spec = importlib.util.spec_from_file_location("build_dataset_flow", ROOT / "flows" / "build_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.integration
def test_refresh_is_incremental_and_a_noop_when_no_title_is_new(api, hub, tiny_model, tmp_path):
    """The refresh deployment's parameters (every title, both formats) on a titles file that grows: only new
    titles are generated, known titles keep their split, the version goes up and a new Hub commit is made only
    when something changed; with nothing new, no review is generated, no byte changes and no commit is made."""
    flow = _flow_module().build_dataset
    titles = tmp_path / "titles.txt"
    titles.write_text("\n".join(TITLES[:8]) + "\n")
    out = tmp_path / "out"
    config = orchestrate.deep_merge(
        tiny_config(tiny_model, out, tmp_path / "cache", source=str(titles)),
        {**deployment_spec("refresh")["parameters"]["config"],
         "publish": {"repo_id": REPO, "endpoint": hub.endpoint, "retry_wait": 0.05}})
    assert config["collect"]["n"] is None and config["build"]["formats"] == "both"

    first = flow(config=config)
    splits_before = json.loads((out / "prefsynth.json").read_text())["splits"]
    assert (first["version"], first["changed"], first["stats"]["generate"]["generated"]) == (1, True, 16)
    assert first["published"][0]["committed"] and first["published"][0]["tag"] == "v1"

    with titles.open("a") as f:
        f.write("\n".join(TITLES[8:11]) + "\n")
    second = flow(config=config)
    gen = second["stats"]["generate"]
    assert (gen["generated"], gen["reused"]) == (6, 16)  # 3 new titles x 2 polarities; the rest from the cache
    assert (second["version"], second["changed"]) == (2, True)
    splits = json.loads((out / "prefsynth.json").read_text())["splits"]
    assert {t: splits[t] for t in splits_before} == splits_before  # no title moved between splits
    assert set(splits) == set(TITLES[:11])
    assert second["published"][0]["committed"] and second["published"][0]["tag"] == "v2"
    assert second["published"][0]["revision"] == hub.head(REPO)
    card = (out / "README.md").read_text()
    assert "Dataset version **2**" in card

    before, commits = _snapshot(out), hub.commit_count
    hub.requests.clear()
    third = flow(config=config)
    assert third["stats"]["generate"]["generated"] == 0
    assert (third["version"], third["changed"]) == (2, False)
    assert _snapshot(out) == before  # every file byte-identical, none rewritten (same mtimes)
    assert hub.commit_count == commits and not [r for r in hub.requests if "/commit/" in r[1]]
    assert (third["published"][0]["committed"], third["published"][0]["revision"]) == \
        (False, second["published"][0]["revision"])


@pytest.mark.integration
def test_sharded_generation_builds_the_same_dataset(api, tiny_model, tmp_path, monkeypatch):
    """shards=3 generates in three task runs and builds exactly what one run builds from the same cache; with the
    training deployment missing from the server, the hand-off is skipped and the build still completes."""
    module = _flow_module()
    monkeypatch.setattr(orchestrate, "TRAIN_FLOW", "no-such-flow")
    cache = tmp_path / "cache"
    state = module.build_dataset(config=tiny_config(tiny_model, tmp_path / "a", cache, n=6), train=True, shards=3,
                                 return_state=True)
    assert state.is_completed()
    sharded = state.result()
    assert sharded["stats"]["generate"]["shards"] == 3 and sharded["stats"]["generate"]["generated"] == 12
    assert sharded["train_runs"] == [{"deployment": "no-such-flow/dpo", "skipped": "no such deployment"}]
    with _client() as client:
        names = sorted(t.name for t in client.read_task_runs(
            flow_run_filter=_by_id(state.state_details.flow_run_id)) if t.name.startswith("generate"))
    assert names == ["generate-shard-1-of-3", "generate-shard-2-of-3", "generate-shard-3-of-3"]

    single = module.build_dataset(config=tiny_config(tiny_model, tmp_path / "b", cache, n=6), shards=1)
    assert single["stats"]["generate"]["generated"] == 0
    a, b = _snapshot(tmp_path / "a" / "paired"), _snapshot(tmp_path / "b" / "paired")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}


@pytest.mark.integration
def test_a_transient_generation_fault_is_retried_from_the_cache(api, tiny_model, tmp_path, monkeypatch):
    """The engine dies after 4 of 12 reviews (an exception injected into the real backend, once): the generate task
    retries on a fresh engine and generates only the 8 reviews the cache does not hold yet."""
    from prefsynth.engines import TransformersBackend

    module = _flow_module()
    monkeypatch.setattr(module, "RETRY_DELAY_SECONDS", 0)
    real, engines, calls = TransformersBackend.generate, [], []

    def dies_once(self, requests):
        calls.append(len(requests))
        engines.append(self)  # kept alive, so a new engine cannot reuse its identity
        for i, out in enumerate(real(self, requests)):
            if len(calls) == 1 and i == 4:
                raise RuntimeError("engine died")
            yield out

    monkeypatch.setattr(TransformersBackend, "generate", dies_once)
    state = module.build_dataset(config=tiny_config(tiny_model, tmp_path / "o", tmp_path / "c", n=6),
                                 return_state=True)
    assert state.is_completed(), state.message
    assert calls == [12, 8] and engines[0] is not engines[1]  # the retry asked only for what was missing, anew
    with _client() as client:
        [task_run] = [t for t in client.read_task_runs(flow_run_filter=_by_id(state.state_details.flow_run_id))
                      if t.name.startswith("generate")]
    assert task_run.run_count == 2 and task_run.state.is_completed()


@pytest.mark.integration
def test_user_errors_are_not_retried(api, tiny_model, tmp_path):
    module = _flow_module()
    state = module.build_dataset(
        config=tiny_config(tiny_model, tmp_path / "o", tmp_path / "c", source=str(tmp_path / "missing.txt")),
        return_state=True)
    assert state.is_failed() and "does not exist" in state.message
    with _client() as client:
        [collect] = [t for t in client.read_task_runs(flow_run_filter=_by_id(state.state_details.flow_run_id))
                     if t.name.startswith("collect")]
    assert collect.run_count == 1 and collect.state.is_failed()  # collect has retries=2, spent on faults only


@pytest.mark.integration
def test_build_run_publishes_its_artifacts(paired_run, api):
    """The markdown summary and the sample table of the paired run, read back through the server's API."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with _client() as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[paired_run["flow_run_id"]])))
    by_type = {a.type: a for a in arts}
    assert {"markdown", "table"} <= set(by_type), [a.type for a in arts]
    md = by_type["markdown"]
    manifest = json.loads((paired_run["out"] / "prefsynth.json").read_text())
    rows = manifest["configs"]["paired"]["rows"]
    # the paired run wrote the folder first (v1); the unpaired run may have added its config since (v2)
    assert md.key == "dataset-reviewer2" and md.data.startswith("# reviewer2: dataset v1\n")
    assert f"| paired | {rows['train']} | {rows['validation']} |" in md.data
    assert f"Written to `{paired_run['out']}`" in md.data
    table = by_type["table"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert len(table) == min(20, rows["train"]) and {"title", "chosen", "rejected"} <= set(table[0])


@pytest.mark.integration
def test_train_run_publishes_its_report(paired_run, api, tmp_path):
    """A short DPO run of the train flow (in-process, on the paired run's data): its report is a markdown artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    spec = importlib.util.spec_from_file_location("train_flow", ROOT / "flows" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = module.train(config={"data": str(paired_run["out"]), "mode": "dpo", "steps": 1, "batch_size": 2,
                                 "out": str(tmp_path / "dpo"), "eval": {"titles": 0}}, return_state=True)
    assert state.is_completed(), state
    with _client() as client:
        [art] = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert art.key == "train-dpo" and art.type == "markdown"
    assert art.data == (tmp_path / "dpo" / "README.md").read_text() and "DPO" in art.data
