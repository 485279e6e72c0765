"""Prefect flow `build-dataset`: the pipeline of src/prefsynth with each stage shown as a Prefect task.

No logic lives here: `prefsynth.pipeline.run` sequences the stages, `prefsynth.orchestrate` says what a stage
logs, how generation is sharded and what training gets; this file only turns those into tasks and Prefect calls.
Prefect's result cache is off (cache_policy=NONE, no persisted results): the generation cache is the one source of
truth for what was already generated, and it survives crashes that Prefect's cache would not see.

    prefsynth build --prefect --formats paired --n 50           # what `make paired` runs (in-process)
    prefect deployment run build-dataset/paired --watch          # the same flow on a worker (`make serve`)

With `shards: N` and a `pool`, generation fans out to N `generate-shard/<pool>` runs that any worker of that pool
may take (prefsynth.fanout); without a pool, the N shards are task runs of this flow, one after another.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from prefsynth import orchestrate
from prefsynth.config import to_dict
from prefsynth.pipeline import PipelineConfig, run

# Network-bound stages retry; generate and judge retry too because they resume from the generation cache (every
# finished review is already in it). build and write are local and deterministic. User errors never retry.
RETRIES = {"collect": 2, "generate": 1, "judge": 1, "publish": 1}
RETRY_DELAY_SECONDS = 10


def _retry_condition(task, task_run, state) -> bool:
    return orchestrate.retryable(state.data)


def prefect_step(fn, name: str):
    from prefsynth.engines import close_backends

    on_error = close_backends if name in ("generate", "judge") else None
    body = orchestrate.stage(fn, name, lambda line: get_run_logger().info(line), on_error)
    return task(body, name=name, cache_policy=NONE, persist_result=False, retries=RETRIES.get(name, 0),
                retry_delay_seconds=RETRY_DELAY_SECONDS, retry_condition_fn=_retry_condition)


def _steps(shards: int):
    def step(fn, name: str):
        t = prefect_step(fn, name)
        if name != "generate" or shards == 1:  # shards < 1 is refused by orchestrate.shard
            return t

        def generate_sharded(titles, templates, cfg, **kw):
            def run_shard(i: int, n: int, part: list[str], **kw):
                return t.with_options(task_run_name=f"generate-shard-{i + 1}-of-{n}")(part, templates, cfg, **kw)

            return orchestrate.generate_in_shards(titles, templates, cfg, shards=shards, run_shard=run_shard, **kw)

        return generate_sharded

    return step


def fan_out_to(pool: str, shards: int, cfg: PipelineConfig, config: dict, timeout: float):
    """The fan-out of a build whose shards run on workers of `pool` (prefsynth.fanout says what it does)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from prefsynth import fanout
    from prefsynth.errors import UserError

    store = cfg.generate.store
    if not store:
        raise UserError(f"shards on workers (pool {pool}) need generate.store: a URL the build and every worker "
                        "reach, e.g. file:///mnt/shared/prefsynth or s3://bucket/prefix")
    name = f"{fanout.SHARD_FLOW}/{pool}"
    # Every worker keeps its own local cache ($PREFSYNTH_HOME on its machine); the store is what they share.
    worker_config = orchestrate.deep_merge(config, {"generate": {"cache_dir": None, "store": store}})
    logger = get_run_logger()

    def submit(spec: str, label: str) -> str:
        try:
            fr = run_deployment(name, parameters={"config": worker_config, "spec": spec}, timeout=0,
                                flow_run_name=f"shard {label} of {cfg.name}", tags=["prefsynth", "shard"])
        except ObjectNotFound:
            raise UserError(f"this Prefect server has no deployment {name} (`make serve` deploys "
                            f"{fanout.SHARD_FLOW}/cpu and {fanout.SHARD_FLOW}/gpu)") from None
        return str(fr.id)

    def read_state(run_id: str) -> tuple[str, str | None]:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
        return (state.type.value, state.message) if state else ("SCHEDULED", None)

    def cancel(attempt, state: str) -> None:
        """A run still queued is Cancelled; a running one Cancelling: its worker stops the process."""
        from prefect.states import Cancelled, Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(attempt.run_id), Cancelling() if state == "RUNNING" else Cancelled(),
                                      force=True)
        logger.info(f"shard {attempt.label}: run {attempt.run_id} cancelled (the build failed)")

    def run_all(titles: list[str]) -> dict:
        parts = orchestrate.shard(titles, shards)
        attempts = []
        for i, part in enumerate(parts):
            spec = fanout.ShardSpec(part, f"{i + 1}/{len(parts)}")
            key = fanout.write_spec(store, spec)
            attempts.append(fanout.Attempt(key, spec.label, submit(key, spec.label)))
        logger.info(f"{len(attempts)} shard runs of {name} submitted for {len(titles)} titles")
        fanout.wait_all(attempts, read_state, lambda a: submit(a.spec, a.label), pool=pool, timeout=timeout,
                        cancel=cancel, log=logger.info)
        reports = [r for a in attempts for r in fanout.read_reports(store, a.spec) if r["run_id"] == a.run_id]
        for r in reports:
            logger.info(fanout.report_line(r))
        return fanout.totals(attempts, reports)

    return run_all


def _effective_config(config: dict | None) -> dict:
    """`config` laid key by key over the deployment's own: Prefect replaces a parameter as a whole, so `--params
    '{"config": {"collect": {"n": 50}}}'` would otherwise drop e.g. the refresh deployment's n=all and formats."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    base: dict = {}
    if deployment_id := deployment.get_id():
        with get_client(sync_client=True) as client:
            base = (client.read_deployment(deployment_id).parameters or {}).get("config") or {}
    return orchestrate.deep_merge(base, config or {})


def _run_name() -> str:
    from prefect.runtime import deployment, flow_run

    return orchestrate.run_name(_effective_config(flow_run.get_parameters().get("config")), deployment.get_name())


def hand_off(summary, cfg: PipelineConfig) -> list[dict]:
    """Start the training deployment(s) on what was built, without waiting: the run waits in its work pool (gpu)
    until a worker there picks it up. Skipped, with a log line, when the dataset did not change or when this
    Prefect server has no such deployment (e.g. `make paired` runs in-process against a throwaway server)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    if not summary.changed:
        logger.info(f"dataset v{summary.version} unchanged: no training run started "
                    f"(start one with `prefect deployment run {orchestrate.TRAIN_FLOW}/<mode>`)")
        return []
    runs = []
    for name, overrides, run_name in orchestrate.handoff_targets(to_dict(summary), cfg.build.config_names(),
                                                                 cfg.name):
        try:
            with get_client(sync_client=True) as client:
                dep = client.read_deployment_by_name(name)
        except ObjectNotFound:
            logger.info(f"hand-off skipped: this Prefect server has no deployment {name} (`make serve` creates it)")
            runs.append({"deployment": name, "skipped": "no such deployment"})
            continue
        params = orchestrate.deep_merge(dep.parameters or {}, {"config": overrides})
        fr = run_deployment(name, parameters=params, timeout=0, flow_run_name=run_name,
                            tags=["prefsynth", "hand-off"])
        ref = overrides["data"] + (f"@{overrides['revision'][:12]}" if overrides.get("revision") else "")
        logger.info(f"training handed off: {name} run '{fr.name}' ({fr.id}) on {ref}, queued in work pool "
                    f"'{dep.work_pool_name}' until a worker of that pool takes it")
        runs.append({"deployment": name, "flow_run_id": str(fr.id), "flow_run_name": fr.name,
                     "work_pool": dep.work_pool_name, "config": params.get("config")})
    return runs


def publish_artifacts(summary, cfg: PipelineConfig) -> None:
    """What the run built, on its page in the Prefect UI: a markdown summary and a table of sample pairs."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from prefsynth import artifacts

    create_markdown_artifact(artifacts.build_markdown(summary, cfg.name),
                             key=artifacts.artifact_key("dataset", cfg.name), description=f"{cfg.name} v{summary.version}: rows, drops, quality, destination")
    rows = artifacts.sample_rows(summary.out)
    if rows:
        create_table_artifact(rows, key=artifacts.artifact_key("samples", cfg.name),
                              description=f"{len(rows)} rows of {cfg.name} v{summary.version} (train split)")


@flow(name="build-dataset", flow_run_name=_run_name, log_prints=True, persist_result=False)
def build_dataset(config: dict | None = None, train: bool = False, shards: int = 1, pool: str | None = None,
                  shard_timeout: float = 6 * 3600) -> dict:
    """Build the preference dataset(s) described by `config` (the `prefsynth build` settings as a nested dict,
    merged key by key into the deployment's own `config` when run from a deployment).

    train: after a successful build (and publish, when configured) that changed the dataset, start `train/dpo`
    for paired and `train/kto` for unpaired data, without waiting. shards: generate in this many parts. pool:
    None runs them here as task runs, one after another (each resumable and retried on its own); a work pool
    (`cpu`, `gpu`) runs them as `generate-shard/<pool>` flow runs on its workers, at the same time, through the
    store `config.generate.store`, waiting at most `shard_timeout` seconds for them."""
    from prefsynth.engines import close_backends

    effective = _effective_config(config)
    cfg = orchestrate.pipeline_config(effective)
    on_workers = pool is not None and shards > 1
    try:
        summary = run(cfg, step=_steps(1 if on_workers else shards),
                      fan_out=fan_out_to(pool, shards, cfg, effective, shard_timeout) if on_workers else None)
    finally:
        close_backends()
    logger = get_run_logger()
    for line in summary.lines():
        logger.info(line)
    publish_artifacts(summary, cfg)
    result = to_dict(summary)
    result["train_runs"] = hand_off(summary, cfg) if train else []
    return result


if __name__ == "__main__":  # kept for old scripts: `prefsynth build --prefect` is the entry point
    from prefsynth.cli import main

    sys.exit(main(["build", "--prefect", *sys.argv[1:]]))
