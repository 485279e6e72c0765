"""The familiar-words preference on and off, title by title, on draws whose kept texts were read blind.

Both builds use the same generations (4 candidates of every review, cached by `bench/writer.py`) and the same
judge scores; only `build.prefer_familiar` differs. For every title that yields a pair both ways, the pair is good
when both texts were read as valid reviews of the asked tone (tests/data/familiar_test_labels.jsonl). Prints, per n,
how many titles are good only with the preference, only without it, and the exact two-sided sign test on those.

    .venv/bin/python bench/familiar_pairs.py                  # seeds 23-25, n = 2 and 4
"""

from __future__ import annotations

import argparse
import json
import sys
from math import comb
from pathlib import Path

from writer import ROOT, read_titles


def sign_test(a: int, b: int) -> float:
    """Exact two-sided sign test of a against b discordant titles."""
    m = a + b
    return min(1.0, 2 * sum(comb(m, i) for i in range(min(a, b) + 1)) / 2 ** m) if m else 1.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="23,24,25", help="draws: bench/results/neurips_seed<S>_titles.txt")
    p.add_argument("--candidates", default="2,4")
    p.add_argument("--labels", default=str(ROOT / "tests" / "data" / "familiar_test_labels.jsonl"),
                   help="the blind labels of the draws; the familiar words are counted from the label files read "
                        "before this one, as they stood when the draws were tested (the shipped counts include "
                        "these labels, which would flatter the preference)")
    a = p.parse_args()

    from prefsynth.build import BuildConfig, build
    from prefsynth.cli import quiet_libraries
    from prefsynth.engines import close_backends
    from prefsynth.generate import GenerateConfig, generate
    from prefsynth.judge import JudgeConfig, JudgeSetup, judge
    from prefsynth.prompts import PromptConfig, Templates
    from prefsynth.rounds import round_rows

    from prefsynth.validity_eval import familiar_file_before

    quiet_libraries()
    words = familiar_file_before(a.labels)
    labels = {(r["title"], r["review"]): r for r in map(json.loads, Path(a.labels).read_text().splitlines())}
    templates = Templates(PromptConfig())
    ns = [int(x) for x in a.candidates.split(",")]
    counts = {n: {"on": 0, "off": 0, "both": 0, "neither": 0, "unread": 0} for n in ns}
    for seed in a.seeds.split(","):
        titles = sorted(read_titles(ROOT / "bench" / "results" / f"neurips_seed{seed}_titles.txt"))
        gen_cfg = GenerateConfig(model="writer", candidates=max(ns))
        gens = generate(titles, templates, gen_cfg)
        jcfg = JudgeConfig(model="bundled")
        judged = judge(gens, templates, jcfg, JudgeSetup.of(gens.model, gen_cfg, jcfg))
        for n in ns:
            good: dict[str, dict[bool, bool | None]] = {}
            for prefer in (True, False):
                cfg = BuildConfig(validation_fraction=0.0, prefer_familiar=prefer, familiar_words=words)
                kept = build(round_rows(gens, judged, templates, cfg, n), titles, templates, cfg,
                             judged.scores).frames["paired"]["train"]
                for r in kept.iter_rows(named=True):
                    sides = [labels.get((r["title"], m[0]["content"])) for m in (r["chosen"], r["rejected"])]
                    ok = None if None in sides else all(
                        s["valid"] and s["label"] == pol for s, pol in zip(sides, ("negative", "positive")))
                    good.setdefault(r["title"], {})[prefer] = ok
            c = counts[n]
            for v in good.values():
                if len(v) < 2:
                    continue
                if None in v.values():
                    c["unread"] += 1
                    continue
                key = "both" if v[True] and v[False] else "on" if v[True] else "off" if v[False] else "neither"
                c[key] += 1
    close_backends()
    for n, c in counts.items():
        titles = c["on"] + c["off"] + c["both"] + c["neither"]
        print(f"n = {n}: {titles} titles with a pair both ways ({c['unread']} with an unread text left out); good "
              f"with the preference on {c['on'] + c['both']}, off {c['off'] + c['both']}; good only on {c['on']}, "
              f"only off {c['off']}: exact two-sided sign test p = {sign_test(c['on'], c['off']):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
