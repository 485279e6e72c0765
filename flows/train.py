"""Prefect flow `train`: a LoRA adapter with TRL on a built dataset, then the evaluation that says if it worked.

No logic lives here: `prefsynth.train.train` does the work; this file turns its phases (load-data, train,
evaluate, push) into Prefect tasks and sends its progress lines (one per trainer log event) to the run's log.
Deployments `train/dpo` and `train/kto` (prefect.yaml) call it with `config={"mode": ..., "data": ...}`.

    prefsynth train --prefect --mode dpo --data data/out/reviewer2 --steps 20 --out /tmp/dpo   # make train-dpo
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from prefsynth.config import from_dict, to_dict
from prefsynth.train import TrainConfig
from prefsynth.train import train as run_train

RETRIES = {"load-data": 1, "push": 1}  # network-bound phases; training itself is not retried


def prefect_step(fn, name: str):
    return task(fn, name=name, cache_policy=NONE, persist_result=False, retries=RETRIES.get(name, 0),
                retry_delay_seconds=10)


# log_prints stays off: dill (datasets' fingerprinting, inside TRL's dataset.map) reads bytecode by capturing
# print() output of dis.dis, and Prefect's print patch would send thousands of bytecode lines to the run log.
# Progress reaches the run log through `log_line` instead.
@flow(name="train", log_prints=False)
def train(config: dict | None = None) -> dict:
    cfg = from_dict(TrainConfig, config or {})
    logger = get_run_logger()
    result = run_train(cfg, step=prefect_step, log_line=logger.info)
    for line in result.lines():
        logger.info(line)
    from prefect.artifacts import create_markdown_artifact

    from prefsynth import artifacts

    create_markdown_artifact(artifacts.train_markdown(result.out), key=artifacts.artifact_key("train", cfg.mode),
                             description=f"{cfg.mode.upper()} on {cfg.data}: verdict, evaluation, metrics")
    return to_dict(result)


if __name__ == "__main__":  # kept for old scripts: `prefsynth train --prefect` is the entry point
    from prefsynth.cli import main

    sys.exit(main(["train", "--prefect", *sys.argv[1:]]))
