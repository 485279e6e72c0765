"""Yield at the source: kept pairs, valid pairs and generation cost at 1, 2 and 4 candidates per review.

One engine run generates 4 candidates per (title, polarity) (candidate k is cached under its own key and seed, so
the n=1 and n=2 builds are exactly what those settings would generate); each n builds from what the pipeline's
rounds would have generated (candidate k only where candidates 0..k-1 failed), so it keeps what that build keeps.
For each n it prints: titles that yield a pair, the generated tokens and estimated seconds (this run's throughput),
and, for the kept
pairs whose two reviews were labelled by reading them
(tests/data/validity_labels.jsonl, matched by text), the share that are valid reviews of the right polarity.

    .venv/bin/python bench/yield_table.py --n 60                      # make bench-yield
    .venv/bin/python bench/yield_table.py --n 60 --dump /tmp/tolabel.jsonl   # texts to label, no labels shown
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60, help="titles")
    p.add_argument("--titles", default=str(ROOT / "data" / "titles.txt"))
    p.add_argument("--seed", type=int, default=7, help="which titles are sampled")
    p.add_argument("--candidates", default="1,2,4")
    p.add_argument("--labels", default=str(ROOT / "tests" / "data" / "validity_labels.jsonl"))
    p.add_argument("--dump", default=None, help="write every kept review and all candidates of the first --dump-all "
                                                 "titles to this jsonl, for labelling")
    p.add_argument("--dump-all", type=int, default=25)
    a = p.parse_args()

    import polars as pl

    from prefsynth.build import BuildConfig, build
    from prefsynth.cli import quiet_libraries
    from prefsynth.collect import CollectConfig, collect
    from prefsynth.engines import close_backends
    from prefsynth.generate import GenerateConfig, generate
    from prefsynth.judge import JudgeConfig, Judged, JudgeSetup, judge
    from prefsynth.noise import wilson
    from prefsynth.prompts import PromptConfig, Templates
    from prefsynth.rounds import round_rows
    from prefsynth.validity_eval import labels_by_text

    quiet_libraries()
    ns = [int(x) for x in a.candidates.split(",")]
    # the labels are of the bundled model's texts, sampled at its best temperature
    gen_cfg = GenerateConfig(model="bundled", temperature=0.5, candidates=max(ns))
    templates = Templates(PromptConfig())
    titles = collect(CollectConfig(source=a.titles, n=a.n, seed=a.seed)).titles
    gens = generate(titles, templates, gen_cfg)
    judged = judge(gens, templates, JudgeConfig(), JudgeSetup.of(gens.model, gen_cfg, JudgeConfig()))
    close_backends()
    rows = gens.rows
    # Throughput is only measured when something was generated; a rerun on the cache reuses that run's figure.
    measured = ROOT / ".state" / "yield_throughput.json"
    tok_per_s = gens.stats.get("tokens_per_second") or float("nan")
    if tok_per_s == tok_per_s:
        measured.parent.mkdir(parents=True, exist_ok=True)
        measured.write_text(json.dumps({"titles": titles, "tokens_per_second": tok_per_s}))
    elif measured.exists() and (before := json.loads(measured.read_text()))["titles"] == titles:
        tok_per_s = before["tokens_per_second"]
    labels = labels_by_text(Path(a.labels))
    cfg = BuildConfig(validation_fraction=0.0)
    lines = [f"{len(titles)} titles, candidates generated at {tok_per_s:.0f} tok/s; judge: {judged.stats.get('judge')}",
             f"{'n':>2} {'pairs kept':>11} {'titles w/ pair':>15} {'gen tokens':>11} {'est. gen s':>11} "
             f"{'labelled pairs':>15} {'valid+polarised':>26}"]
    print("\n".join(lines))
    dump: dict[tuple[str, str], dict] = {}
    for n in ns:
        sub = round_rows(gens, Judged(judged.scores), templates, cfg, n)  # what a build with n candidates keeps
        out = build(sub, titles, templates, cfg, judged.scores)
        kept = out.frames["paired"]["train"]
        tokens = int(sub.get_column("completion_tokens").sum())
        good = labelled = 0
        for r in kept.iter_rows(named=True):
            c, j = r["chosen"][0]["content"], r["rejected"][0]["content"]
            for text, pol in ((c, "negative"), (j, "positive")):
                dump[(r["title"], text)] = {"title": r["title"], "polarity": pol, "review": text}
            lc, lj = labels.get((r["title"], c)), labels.get((r["title"], j))
            if lc and lj:
                labelled += 1
                good += bool(lc["valid"] and lj["valid"] and lc["label"] == "negative" and lj["label"] == "positive")
        lo, hi = wilson(good, labelled)
        share = f"{good}/{labelled} = {good / labelled:.0%} [{lo:.0%}, {hi:.0%}]" if labelled else "-"
        secs = f"{tokens / tok_per_s:.0f}" if tok_per_s == tok_per_s and tok_per_s else "-"  # "-": all from cache
        lines.append(f"{n:>2} {kept.height:>11} {kept.height / len(titles):>15.0%} {tokens:>11} "
                     f"{secs:>11} {labelled:>15} {share:>26}")
        print(lines[-1])
    out = ROOT / "bench" / "results" / "yield.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    if a.dump:
        from prefsynth.filters import clean_review

        first = set(sorted(titles)[: a.dump_all])
        extra = rows.filter(pl.col("title").is_in(list(first))).with_columns(clean_review(pl.col("text")).alias("r"))
        for r in extra.iter_rows(named=True):
            dump.setdefault((r["title"], r["r"]), {"title": r["title"], "polarity": r["polarity"], "review": r["r"]})
        Path(a.dump).write_text("".join(json.dumps(v, ensure_ascii=False) + "\n" for v in dump.values()))
        print(f"{len(dump)} reviews to label written to {a.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
