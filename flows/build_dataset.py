"""Prefect flow `build-dataset`: the pipeline of src/prefsynth with each stage shown as a Prefect task.

No logic lives here: `prefsynth.pipeline.run` sequences the stages and this file only says how a stage becomes a
task. Prefect's result cache is off (cache_policy=NONE): the generation cache is the one source of truth for what
was already generated, and it survives crashes that Prefect's cache would not see.

    python flows/build_dataset.py --formats paired --n 50        # what `make paired` runs (in-process)
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from prefsynth.config import from_dict, to_dict
from prefsynth.pipeline import PipelineConfig, run

RETRIES = {"collect": 2, "publish": 1}  # network-bound stages; generation is resumable from the cache instead


def prefect_step(fn, name: str):
    return task(fn, name=name, cache_policy=NONE, persist_result=False, retries=RETRIES.get(name, 0),
                retry_delay_seconds=10)


@flow(name="build-dataset", log_prints=True)
def build_dataset(config: dict | None = None) -> dict:
    from prefsynth.generate import close_backends

    cfg = from_dict(PipelineConfig, config or {})
    try:
        summary = run(cfg, step=prefect_step)
    finally:
        close_backends()
    logger = get_run_logger()
    for line in summary.lines():
        logger.info(line)
    return to_dict(summary)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from prefsynth.cli import quiet_libraries, run_cli
    from prefsynth.config import add_arguments, parse_into

    quiet_libraries()
    parser = argparse.ArgumentParser(description="Run the build-dataset flow in this process.")
    add_arguments(parser, PipelineConfig)
    args = parser.parse_args(argv)

    def go() -> int:
        cfg = parse_into(PipelineConfig, args)
        build_dataset(to_dict(cfg))
        return 0

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
