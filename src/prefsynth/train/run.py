"""`train()`: validate -> load -> fit -> evaluate -> save -> push. The output folder appears whole or not at all."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefsynth.config import to_dict
from prefsynth.fsutil import FileLock, atomic_dir, atomic_write_json, check_writable_dir
from prefsynth.train.config import TrainConfig
from prefsynth.train.data import Data, load_data
from prefsynth.train.evaluate import evaluate
from prefsynth.train.push import push
from prefsynth.train.report import TrainResult, render_report
from prefsynth.train.trainer import (
    Device, Fit, Step, fit, last_logged, load_model, resolve_base, resolve_device, trl_args,
)

log = logging.getLogger("prefsynth.train")


def plain_step(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """Run a phase as it is (the Prefect flow passes a step that makes each phase a task)."""
    return fn


def train(cfg: TrainConfig, step: Step = plain_step, log_line: Callable[[str], None] | None = None) -> TrainResult:
    """Train, evaluate and write `cfg.out` (replaced in one step when everything succeeded); optionally push."""
    say = log_line or (lambda s: log.info("%s", s))
    t_start = time.time()
    cfg.validate()
    out = check_writable_dir(cfg.resolved_out(), "training output")
    device = resolve_device(cfg)  # before loading anything: "no GPU" must fail in a second
    data = step(load_data, "load-data")(cfg)
    ref = resolve_base(cfg, data)
    say(f"{cfg.mode.upper()} on {data.config} ({data.train.height} train / {data.validation.height} validation rows) "
        f"from {data.source}; base model {ref.name}; device {device.kind} ({device.dtype}, {device.optim})")

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock", what=f"training output {out}"), atomic_dir(out) as tmp:
        model, tokenizer = load_model(ref, device)
        work = tmp / ".trainer"  # TRL's scratch space; removed before the folder is published
        done = fit(cfg, data, model, tokenizer, device, work, say, step)
        evaluation = step(evaluate, "evaluate")(cfg, data, done.model, tokenizer, ref, say)
        shutil.rmtree(work, ignore_errors=True)
        metrics = save(tmp, out, cfg, data, ref, device, done, tokenizer, evaluation)
    say(f"wrote {out} in {time.time() - t_start:.0f}s")
    pushed = step(push, "push")(out, cfg) if cfg.push_to else None
    return TrainResult(str(out), cfg.mode, ref.name, metrics["steps"], metrics["seconds"], metrics["seconds_per_step"],
                       metrics["train"], metrics["eval"],
                       {k: v for k, v in evaluation.items() if k != "samples"} if evaluation else {}, pushed)


def save(tmp: Path, out: Path, cfg: TrainConfig, data: Data, ref, device: Device, done: Fit, tokenizer,
         evaluation: dict) -> dict:
    """Write adapter, tokenizer, curves, config, metrics and report into `tmp` (becomes `out`); the metrics."""
    from prefsynth.plots import training_curves

    trainer, history = done.trainer, done.history
    done.model.save_pretrained(tmp)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(tmp)
    timed = done.step_seconds[1:] or done.step_seconds  # the first step pays for warm-up
    metrics = {
        "mode": cfg.mode, "steps": trainer.state.global_step, "epochs": round(trainer.state.epoch or 0.0, 3),
        "seconds": round(done.seconds, 1),
        "seconds_per_step": round(statistics.median(timed), 3) if timed else 0.0,
        "device": dataclasses.asdict(device),
        "base_model": {"name": ref.name, "path": ref.path, "fingerprint": ref.fingerprint,
                       "hub_id": ref.name if "/" in ref.name else None},  # folder names hold no "/"
        "data": {"source": data.source, "revision": data.revision, "config": data.config,
                 "hub_id": None if data.revision is None else data.source,
                 "version": data.version, "train_rows": data.train.height,
                 "validation_rows": data.validation.height, "truncation": done.truncation},
        "hyperparameters": {"batch_size": cfg.effective_batch_size(), "total_steps": done.total_steps,
                            "trl_args": trl_args(trainer.args)},
        "train": last_logged(history, "loss"), "eval": last_logged(history, "eval_loss"),
        "evaluation": evaluation, "history": history,
    }
    (tmp / "training_curves.png").write_bytes(training_curves(history, cfg.mode))
    atomic_write_json(tmp / "train_config.json", to_dict(cfg) | {"resolved": {
        "out": str(out), "base_model": ref.path, "batch_size": cfg.effective_batch_size(),
        "total_steps": done.total_steps, "device": device.kind, "dtype": device.dtype, "optim": device.optim}})
    atomic_write_json(tmp / "metrics.json", metrics)
    (tmp / "README.md").write_text(render_report(cfg, metrics), encoding="utf-8")
    return metrics
