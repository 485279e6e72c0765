"""DPO seconds per step on the bundled model, before and after the cheap wins, measured side by side in one run.

    .venv/bin/python bench/dpo_speed.py --data data/out/reviewer2 --steps 5

Each variant trains the same steps on the same pairs (LoRA r8, batch 10, max_length 128); printed: median seconds
per step (the first step is left out: it pays for warm-up) and the whole fit including TRL's reference precompute.
TRL 1.16's `padding_free` is not among the variants: that release switches it off with a warning ("temporarily
unavailable after a refactor").
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

VARIANTS = {  # name -> TrainConfig overrides
    "before (reference forward every step, gradient checkpointing)": {"precompute_ref": False},
    "precomputed reference log-probs": {"precompute_ref": True},
    "precomputed reference, no gradient checkpointing": {"precompute_ref": True, "gradient_checkpointing": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/out/reviewer2", help="a paired dataset folder written by prefsynth build")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    from prefsynth.cli import quiet_libraries
    from prefsynth.train import TrainConfig, train
    from prefsynth.train.config import EvalSettings

    quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in VARIANTS.items():
            cfg = TrainConfig(data=args.data, mode="dpo", steps=args.steps, batch_size=args.batch, eval_steps=0,
                              eval=EvalSettings(titles=0), out=Path(tmp) / str(len(rows)), **over)
            res = train(cfg, log_line=lambda s: None)
            m = json.loads((Path(res.out) / "metrics.json").read_text())
            rows.append((name, m["seconds_per_step"], m["seconds"]))
    print(f"DPO, {args.steps} steps of batch {args.batch} on {args.data}:")
    for name, sps, secs in rows:
        print(f"  {name:<60} {sps:6.2f} s/step   fit {secs:6.1f} s   ({rows[0][1] / sps:.2f}x per step)")


if __name__ == "__main__":
    main()
