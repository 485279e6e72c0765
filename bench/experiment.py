"""Does the data train the bot? Steered vs sampled (on-policy) pairs, DPO and KTO, judged on held-out titles.

    make experiment                       # default size (see --help); results in bench/results/experiment/
    .venv/bin/python bench/experiment.py --n 60 --eval-titles 100 --steps 8    # a smaller run

From one title list: builds the dataset both ways (`build.pairing` steered and sampled, labelled by the generator's
own LLM judge), trains DPO and KTO LoRA adapters on each with the Reviewer #2 hyper-parameters and one step budget,
then the base model and every tuned model write a review for each of `--eval-titles` titles that no dataset was
built from (through vLLM, merged weights), scored by judges that did not label the training data (the polarity
head trained on real reviews, and the lexicon alone) and by the validity rules. Every stage leaves its result in the
work folder and is skipped on a rerun (kill it and run it again: it resumes). Prints one table; writes table.md,
curves-<pairing>.png, samples.md and results.json into --results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("dpo", "kto")


def stage(work: Path, name: str, fn):
    """Run `fn` once: its JSON result is kept in work/<name>.json and reused on a rerun (a completion marker)."""
    marker = work / f"{name}.json"
    if marker.exists():
        return json.loads(marker.read_text())
    t0 = time.time()
    result = fn()
    result["stage_seconds"] = round(time.time() - t0, 1)
    marker.write_text(json.dumps(result, indent=1, default=str))
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {result['stage_seconds']:.0f}s", flush=True)
    return result


def build_data(args, pairing: str, out: Path) -> dict:
    from prefsynth.pipeline import PipelineConfig, run

    cfg = PipelineConfig()
    # the experiment's measured setting: the base model writes its own pairs, at its own best temperature
    cfg.generate.model, cfg.generate.temperature = "bundled", 0.5
    cfg.collect.source, cfg.collect.n = args.titles, args.n
    cfg.build.out, cfg.build.formats, cfg.build.pairing = out, "both", pairing
    cfg.build.min_margin, cfg.build.validation_fraction = args.min_margin, args.validation_fraction
    # Labels from the generator's own LLM judge only: the head and the lexicon stay independent for the evaluation.
    # The text judge (added after these results were measured) is off too, so the measured setting is what runs.
    cfg.judge.head, cfg.judge.lexicon, cfg.judge.text = False, False, False
    s = run(cfg)
    print("\n".join(s.lines()), flush=True)
    b = s.stats["build"]
    return {"rows": s.rows, "pairs_kept": b["pairs_kept"], "reviews": s.stats["generate"].get("requested"),
            "generated_tokens": s.stats["generate"].get("completion_tokens"), "sampled": b.get("sampled"),
            "wall": s.wall_seconds}


def train_run(args, data: Path, mode: str, out: Path) -> dict:
    from prefsynth.train import TrainConfig, train
    from prefsynth.train.config import EvalSettings

    steps = args.steps
    cfg = TrainConfig(data=str(data), mode=mode, steps=steps, batch_size=args.batch, out=out,
                      eval_steps=max(1, steps // 4), logging_steps=1, eval=EvalSettings(titles=0))
    res = train(cfg, log_line=lambda s: print(f"  {mode}: {s}", flush=True))
    m = json.loads((Path(res.out) / "metrics.json").read_text())
    return {"out": res.out, "seconds": m["seconds"], "seconds_per_step": m["seconds_per_step"],
            "train_rows": m["data"]["train_rows"], "validation_rows": m["data"]["validation_rows"],
            "epochs": m["epochs"], "history": m["history"]}


def speed_check(args, data: Path, out: Path) -> dict:
    """DPO seconds per step without TRL's precomputed reference log-probabilities (the "before" of the cheap win;
    the DPO runs above use it), a few steps on the same data and batch."""
    from prefsynth.train import TrainConfig, train
    from prefsynth.train.config import EvalSettings

    cfg = TrainConfig(data=str(data), mode="dpo", steps=args.speed_steps, batch_size=args.batch, out=out,
                      eval_steps=0, precompute_ref=False, eval=EvalSettings(titles=0))
    res = train(cfg, log_line=lambda s: None)
    m = json.loads((Path(res.out) / "metrics.json").read_text())
    return {"seconds_per_step": m["seconds_per_step"], "seconds": m["seconds"], "steps": m["steps"]}


def reviews(name: str, model_path: str, titles, templates, gen, base, work: Path) -> dict:
    from prefsynth.train.compare import write_reviews

    w = write_reviews(name, model_path, titles, templates, gen, base)
    w.rows.write_parquet(work / f"reviews-{name}.parquet")
    return {"seconds": w.seconds, "n": w.rows.height}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--titles", default=str(ROOT / "data" / "titles.txt"), help="title list (txt/csv/jsonl/parquet)")
    ap.add_argument("--n", type=int, default=160, help="titles the datasets are built from")
    ap.add_argument("--validation-fraction", type=float, default=0.2, help="share of built titles in validation")
    ap.add_argument("--eval-titles", type=int, default=100, help="held-out titles every model reviews")
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps of every training run (same budget)")
    ap.add_argument("--speed-steps", type=int, default=3,
                    help="steps of the DPO speed check without precomputed reference log-probs (0 skips it)")
    ap.add_argument("--batch", type=int, default=8, help="per-device batch size of every run (KTO needs >= 2)")
    ap.add_argument("--min-margin", type=float, default=0.15,
                    help="sampled pairing's judged margin (the LLM judge's scores are compressed: IQR ~0.47-0.60)")
    ap.add_argument("--pairings", default="steered,sampled")
    ap.add_argument("--work", default=str(ROOT / ".state" / "experiment"), help="datasets, adapters, markers")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "experiment"))
    args = ap.parse_args(argv)

    from prefsynth.cli import quiet_libraries

    quiet_libraries()
    import polars as pl

    from prefsynth.collect import CollectConfig, collect
    from prefsynth.generate import GenerateConfig
    from prefsynth.prompts import PromptConfig, Templates
    from prefsynth.model import merge_adapter
    from prefsynth.train.compare import base_model, compare, held_out_titles

    from experiment_report import write_results

    t_start = time.time()
    work, results = Path(args.work), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    pairings = [p for p in args.pairings.split(",") if p]
    built = {p: stage(work, f"build-{p}", lambda p=p: build_data(args, p, work / f"data-{p}")) for p in pairings}
    used = set(collect(CollectConfig(source=args.titles, n=args.n)).titles)
    every = collect(CollectConfig(source=args.titles, n=None)).titles
    titles = held_out_titles(sorted(every), used, args.eval_titles)
    if len(titles) < args.eval_titles:
        print(f"only {len(titles)} held-out titles in {args.titles} (wanted {args.eval_titles}): use a longer list "
              f"or a smaller --n", file=sys.stderr)
    templates = Templates(PromptConfig())
    base = base_model()
    gen = GenerateConfig(max_tokens=96, temperature=0.7, top_p=0.95, seed=0, repetition_penalty=1.0, stop=[])
    evals = {"base": stage(work, "reviews-base", lambda: reviews("base", base.path, titles, templates, gen, base,
                                                                  work))}
    runs = {}
    for p in pairings:
        for mode in MODES:
            name = f"{mode}-{p}"
            runs[name] = stage(work, f"train-{name}", lambda p=p, mode=mode, name=name: train_run(
                args, work / f"data-{p}", mode, work / f"train-{name}"))
            merged = work / f"merged-{name}"
            evals[name] = stage(work, f"reviews-{name}", lambda name=name, merged=merged: reviews(
                name, str(merge_adapter(Path(base.path), Path(runs[name]["out"]), merged)), titles, templates, gen,
                base,
                work))
    if args.speed_steps and "steered" in pairings:
        runs_speed = stage(work, "speed-dpo-no-precompute", lambda: speed_check(args, work / "data-steered",
                                                                                 work / "speed-dpo"))
    else:
        runs_speed = None
    from prefsynth.train.compare import Written

    written = {n: Written(n, pl.read_parquet(work / f"reviews-{n}.parquet"), e["seconds"]) for n, e in evals.items()}
    table = {n: compare(written["base"], w) for n, w in written.items() if n != "base"}
    write_results(results, args, built, runs, evals, table, written, time.time() - t_start, runs_speed)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
