"""A real, short training run on the bundled SmolLM2-135M-Instruct: not a CI test, a measurement.

Builds the dataset first when the folder lacks the needed config (vLLM when installed: a couple of minutes for 40
titles on 2 CPU cores), then trains a LoRA adapter for a few steps, evaluates it and prints the numbers that say
whether the run worked.

    .venv/bin/python scripts/train_real.py                                  # DPO, 30 steps, data/out/reviewer2
    .venv/bin/python scripts/train_real.py --data /tmp/ds40 --steps 40 --mode kto --out /tmp/kto40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from prefsynth.constants import CONFIG_FOR_MODE, DEFAULT_OUT


def main(argv: list[str] | None = None) -> int:
    from prefsynth.cli import quiet_libraries, run_cli

    quiet_libraries()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_OUT), help="dataset folder (built if missing)")
    p.add_argument("--n", type=int, default=40, help="titles to build when the dataset is missing")
    p.add_argument("--mode", choices=["dpo", "kto"], default="dpo")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=None, help="default: the Reviewer #2 value (DPO 10, KTO 16)")
    p.add_argument("--eval-titles", type=int, default=100, help="validation titles to evaluate on (all, up to this)")
    p.add_argument("--out", default="/tmp/prefsynth-train-real")
    args = p.parse_args(argv)

    def go() -> int:
        from prefsynth.train import EvalSettings, TrainConfig, train

        data = Path(args.data)
        if not (data / CONFIG_FOR_MODE[args.mode] / "train.parquet").exists():
            build(data, args.n)
        cfg = TrainConfig(data=str(data), mode=args.mode, out=Path(args.out), base_model="bundled", steps=args.steps,
                          batch_size=args.batch_size, eval=EvalSettings(titles=args.eval_titles))
        t0 = time.time()
        result = train(cfg)
        m = json.loads((Path(result.out) / "metrics.json").read_text())
        e = m["evaluation"]
        keys = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl"]
        print(json.dumps({
            "mode": m["mode"], "steps": m["steps"], "train_rows": m["data"]["train_rows"],
            "seconds_per_step": m["seconds_per_step"], "train_seconds": m["seconds"],
            "wall_seconds": round(time.time() - t0, 1), "device": m["device"],
            "truncation": m["data"]["truncation"],
            "train": {k: m["train"][k] for k in keys if k in m["train"]},
            "validation": {k: m["eval"]["eval_" + k] for k in keys if "eval_" + k in m["eval"]},
            "evaluation": {k: v for k, v in e.items() if k != "samples"},
        }, indent=2))
        for s in e.get("samples", [])[:2]:
            print(f"\n{s['title']}\n  base  ({s['score_base']:.2f}): {s['base']}\n  tuned ({s['score_tuned']:.2f}): "
                  f"{s['tuned']}")
        print(f"\nfull report: {Path(result.out) / 'README.md'}")
        return 0

    return run_cli(go)


def build(out: Path, n: int) -> None:
    from prefsynth.build import BuildConfig
    from prefsynth.collect import CollectConfig
    from prefsynth.engines import close_backends
    from prefsynth.pipeline import PipelineConfig, run

    # A quarter of the titles in validation: the evaluation needs titles the adapter never saw.
    cfg = PipelineConfig(collect=CollectConfig(n=n),
                         build=BuildConfig(out=out, formats="both", validation_fraction=0.25))
    try:
        print("\n".join(run(cfg).lines()), flush=True)
    finally:
        close_backends()


if __name__ == "__main__":  # vLLM's CPU workers are spawned: engine code must sit under this guard
    sys.exit(main())
