"""Prefect flow `generate-shard`: one shard of a build's round, on whichever worker of its pool takes it.

Started by `build-dataset` runs with `shards: N` and a `pool` (never by hand): the build writes the shard's spec to
the shared store and runs the `generate-shard/<pool>` deployment; this flow generates and judges the spec's titles
through the worker's own cache and the store (prefsynth.fanout.run_shard). No logic lives here.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from prefsynth import fanout, orchestrate


# The run's name comes from the build that starts it ("shard 2/4, round 1 of reviewer2").
@flow(name=fanout.SHARD_FLOW, log_prints=True, persist_result=False)
def generate_shard(config: dict, spec: str) -> dict:
    """Generate and judge one shard (`spec`: its name in the store of `config.generate.store`)."""
    from prefsynth.engines import close_backends

    cfg = orchestrate.pipeline_config(config)
    body = orchestrate.stage(fanout.run_shard, "shard", lambda line: get_run_logger().info(line), close_backends)
    try:
        report = body(cfg, spec, str(flow_run.get_id() or ""))
    finally:
        close_backends()
    get_run_logger().info(f"shard {report['label']}: {report['generated']:.0f} reviews generated, "
                          f"{report['pulled_from_store']:.0f} taken from the store, {report['judged']:.0f} judged "
                          f"on {report['worker'] or report['host']} (cache {report['home']})")
    return report
