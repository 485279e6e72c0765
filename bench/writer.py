"""The writer against the bundled model, side by side in one run, on titles the writer was not trained on.

For each model: 4 candidates per (title, polarity), judged by the bundled model's head + the text judge (the writer
is judged by the model it was trained from); then, as bench/yield_table.py does, for n = 1, 2, 4, what a build with
n candidates would generate and keep (prefsynth.rounds.round_rows: candidate k only where candidates 0..k-1 failed):
titles that yield a pair, the tokens generated, and, for kept pairs whose two reviews were read by hand
(tests/data/writer_eval_labels.jsonl, matched by title and text), the share that are valid reviews of the asked tone.

    .venv/bin/python bench/writer.py --n 60                       # make bench-writer
    .venv/bin/python bench/writer.py --n 60 --dump /tmp/w         # /tmp/w.txt to read blind, /tmp/w.key.json
    .venv/bin/python bench/writer.py --titles bench/results/neurips_seed4_titles.txt --exact --models writer \
        --labels tests/data/neurips_test_labels.jsonl                # the NeurIPS test of the shipped writer
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "tests" / "data" / "writer_eval_labels.jsonl"


def read_titles(path: Path) -> list[str]:
    """The titles of a one-per-line file, stripped, each once, in file order."""
    return [t for t in dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines()) if t]


def seen_titles() -> set[str]:
    """Titles a writer may have been trained on or a reader has labelled: the shipped adapters' training titles and
    every title of a label file (accepted or not), so a comparison with a retrained writer stays on unseen titles."""
    from prefsynth.constants import WRITER_DIR, WRITER_DPO_DIR
    from prefsynth.train.writer import RECORD
    from prefsynth.train.writer_config import DPO_LABELS, WRITER_LABELS
    from prefsynth.validity_eval import ALL_LABELS

    seen = set()
    for record in (WRITER_DIR / RECORD, WRITER_DPO_DIR / RECORD):
        seen |= set(json.loads(record.read_text())["titles"]) if record.exists() else set()
    for path in [p for p in {*WRITER_LABELS, *DPO_LABELS, *ALL_LABELS} if p.exists()]:
        seen |= {json.loads(line)["title"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    # ...and every title of an earlier draw, with or without a kept (so labelled) text
    for path in (ROOT / "bench" / "results").glob("neurips_seed*_titles.txt"):
        seen |= set(read_titles(path))
    return seen


def heldout_titles(source: Path, n: int, seed: int) -> list[str]:
    """n titles of the source file that no writer trained on, no reader labelled and no earlier draw had, sorted."""
    seen = seen_titles()
    pool = [t for t in read_titles(source) if t not in seen]
    return sorted(random.Random(seed).sample(pool, min(n, len(pool))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60, help="held-out titles")
    p.add_argument("--titles", default=None, help="sample the titles from this file instead (e.g. the NeurIPS 2023 "
                                                  "titles in ../shared/data); titles a writer was trained on or a "
                                                  "reader labelled are left out either way (unless --exact)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "writer.txt"), help="results file")
    p.add_argument("--seed", type=int, default=8, help="which titles are sampled")
    p.add_argument("--models", default="bundled:0.5,writer", help="comma-separated MODEL or MODEL:TEMPERATURE "
                   "(default: each model at its measured best; no temperature: generate's default)")
    p.add_argument("--candidates", default="1,2,4")
    p.add_argument("--openings", default=None, help="semicolon-separated values of --generate.opening to compare, each "
                                                     "a row per model and n (default: generate's own)")
    p.add_argument("--max-sentences", default=None, help="comma-separated values of --generate.max_sentences to "
                                                         "compare, each a row per model and n (default: generate's)")
    p.add_argument("--max-p-invalid", default=None, help="comma-separated validity-scorer thresholds to build with "
                   "(default: the build's; 1.0: rules alone), each a row per model and n")
    p.add_argument("--prefer-familiar", default=None, help="comma-separated values of --build.prefer_familiar to "
                   "build with (e.g. true,false), each a row per model and n (default: the build's)")
    p.add_argument("--familiar-before", default=None, metavar="LABEL_FILE", help="build with the familiar words "
                   "counted from the label files read before this one (as they stood when its draw was tested) "
                   "instead of the shipped counts, e.g. familiar_test_labels.jsonl")
    p.add_argument("--labels", default=str(LABELS), help="label file(s), comma-separated")
    p.add_argument("--exact", action="store_true", help="take every title of --titles as it is (no draw, nothing "
                   "left out): reruns a labelled test from its title list, e.g. bench/results/neurips_seed4_titles.txt")
    p.add_argument("--earlier-standard", action="store_true", help="count texts marked valid_by_earlier_standard as "
                   "valid (claims of the work's track record, which labels before the NeurIPS test file accepted)")
    p.add_argument("--dump", default=None, help="write the kept reviews of every model, shuffled, without model or "
                                                "asked tone, to DUMP.txt (and the key to DUMP.key.json)")
    a = p.parse_args()
    if a.exact and not a.titles:
        p.error("--exact needs --titles")

    from prefsynth.build import BuildConfig, build
    from prefsynth.cli import quiet_libraries
    from prefsynth.constants import DEFAULT_TITLES
    from prefsynth.engines import close_backends
    from prefsynth.generate import GenerateConfig, generate
    from prefsynth.judge import JudgeConfig, JudgeSetup, judge
    from prefsynth.noise import wilson
    from prefsynth.prompts import PromptConfig, Templates
    from prefsynth.quality import cut_tag, opening_tag, writer_tag
    from prefsynth.rounds import round_rows
    from prefsynth.validity_eval import labels_by_text

    quiet_libraries()
    ns = [int(x) for x in a.candidates.split(",")]
    if a.exact:
        titles = sorted(read_titles(Path(a.titles)))
    else:
        titles = heldout_titles(Path(a.titles) if a.titles else DEFAULT_TITLES, a.n, a.seed)
    templates = Templates(PromptConfig())
    labels = {k: v for path in a.labels.split(",") for k, v in labels_by_text(Path(path)).items()}
    thresholds = [float(x) for x in a.max_p_invalid.split(",")] if a.max_p_invalid else \
        [BuildConfig().max_p_invalid]
    from prefsynth.validity_eval import familiar_file_before

    familiar_words = {"familiar_words": familiar_file_before(a.familiar_before)} if a.familiar_before else {}
    prefers = [v.strip().lower() in ("1", "true", "yes") for v in a.prefer_familiar.split(",")] \
        if a.prefer_familiar else [BuildConfig().prefer_familiar]
    drawn = f"the titles of {Path(a.titles).name}" if a.exact else \
        f"held-out titles (seed {a.seed}{', from ' + Path(a.titles).name if a.titles else ''})"
    lines = [f"{len(titles)} {drawn}; "
             f"judged by the bundled model's head + text judge",
             f"{'model':<38} {'n':>2} {'pairs kept':>10} {'titles w/ pair':>14} {'gen tokens':>10} "
             f"{'labelled':>8} {'valid+polarised pairs':>24} {'texts':>18}"]
    print("\n".join(lines))
    dump: dict[tuple[str, str], dict] = {}
    openings = a.openings.split(";") if a.openings else [GenerateConfig().opening]
    cuts = [int(x) for x in a.max_sentences.split(",")] if a.max_sentences else [GenerateConfig().max_sentences]
    for spec, opening, cut in [(m, o, c) for m in a.models.split(",") for o in openings for c in cuts]:
        name, _, temperature = spec.rpartition(":") if ":" in spec else (spec, "", "")
        gen_cfg = GenerateConfig(model=name, candidates=max(ns), opening=opening, max_sentences=cut)
        if temperature:
            gen_cfg.temperature = float(temperature)
        gens = generate(titles, templates, gen_cfg)
        jcfg = JudgeConfig(model="bundled")  # every model's reviews judged alike, by the judge that was measured
        judged = judge(gens, templates, jcfg, JudgeSetup.of(gens.model, gen_cfg, jcfg))
        tag = writer_tag(gens.model.name, gens.model.fingerprint).get("model", gens.model.name)
        name_t = f"{gens.model.name} T {gen_cfg.temperature}" + (f" opening {opening!r}" if a.openings else "") + (
            f" first {cut}" if a.max_sentences else "")
        for n, threshold, prefer in [(n, t, f) for n in ns for t in thresholds for f in prefers]:
            cfg = BuildConfig(validation_fraction=0.0, max_p_invalid=threshold, prefer_familiar=prefer,
                              **familiar_words)
            # what a build with n candidates generates and keeps (candidate k only where 0..k-1 failed)
            rows = round_rows(gens, judged, templates, cfg, n)
            out = build(rows, titles, templates, cfg, judged.scores)
            kept = out.frames["paired"]["train"]
            tokens = int(rows.get_column("completion_tokens").sum())
            good = labelled = texts_good = texts = 0
            for r in kept.iter_rows(named=True):
                sides = ((r["chosen"][0]["content"], "negative"), (r["rejected"][0]["content"], "positive"))
                found = []
                for text, pol in sides:
                    dump.setdefault((r["title"], text), {"title": r["title"], "polarity": pol, "review": text,
                                                         "model": tag, "sampling": gen_cfg.sampling() | (
                                                             {"model": tag} if tag != gens.model.name else {}) | (
                                                             opening_tag(opening)) | cut_tag(cut)})
                    if (lab := labels.get((r["title"], text))) is not None:
                        valid = lab["valid"] or (a.earlier_standard and lab.get("valid_by_earlier_standard", False))
                        ok = bool(valid and lab["label"] == pol)
                        found.append(ok)
                        texts += 1
                        texts_good += ok
                if len(found) == 2:
                    labelled += 1
                    good += all(found)
            shown = name_t + (f" scorer {threshold:g}" if threshold < 1 else " rules only") + (
                f" familiar {'on' if prefer else 'off'}" if a.prefer_familiar else "")
            lo, hi = wilson(good, labelled)
            share = f"{good}/{labelled} = {good / labelled:.0%} [{lo:.0%}, {hi:.0%}]" if labelled else "-"
            tshare = f"{texts_good}/{texts} = {texts_good / texts:.0%}" if texts else "-"
            lines.append(f"{shown:<38} {n:>2} {kept.height:>10} {kept.height / len(titles):>14.0%} "
                         f"{tokens:>10} {labelled:>8} {share:>24} {tshare:>18}")
            print(lines[-1])
    close_backends()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    if a.dump:
        items = [v for v in dump.values() if (v["title"], v["review"]) not in labels]
        random.Random(2026).shuffle(items)
        Path(a.dump + ".key.json").write_text(json.dumps(items, ensure_ascii=False))
        Path(a.dump + ".txt").write_text("".join(f"[{i}] {v['title']}\n{v['review']}\n\n" for i, v in enumerate(items)))
        print(f"{len(items)} unlabelled kept reviews written to {a.dump}.txt (key: {a.dump}.key.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
