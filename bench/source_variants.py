"""Sampling settings at the source, side by side: what share of reviews the rules reject, and (with labels read
blind) what share of the rest are valid reviews of the right tone.

One engine, one run: every variant samples one review per (title, polarity) from the same default prompts (system
message and opening included), with the same per-review seeds; only the sampling settings differ. The texts the
rules let through are written, shuffled and without their variant, to a file for labelling by reading; a second
call with `--labels` joins the labels back.

    .venv/bin/python bench/source_variants.py --n 40 --dump /tmp/blind.jsonl
    .venv/bin/python bench/source_variants.py --n 40        # labels: tests/data/source_variant_labels.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> vLLM SamplingParams on top of BASE (the sampling before these settings were compared)
BASE = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 96}
VARIANTS: dict[str, dict] = {
    "old default (T 0.7)": {},
    "stop at blank line": {"stop": ["\n\n"]},
    "stop, T 0.5": {"stop": ["\n\n"], "temperature": 0.5},
    "stop, T 0.3": {"stop": ["\n\n"], "temperature": 0.3},
    "stop, T 0.5, rep 1.1": {"stop": ["\n\n"], "temperature": 0.5, "repetition_penalty": 1.1},
    "stop, T 0.5, rep 1.05": {"stop": ["\n\n"], "temperature": 0.5, "repetition_penalty": 1.05},
    "stop, T 0.5, freq 0.5": {"stop": ["\n\n"], "temperature": 0.5, "frequency_penalty": 0.5},
    "stop, T 0.7, freq 0.5": {"stop": ["\n\n"], "frequency_penalty": 0.5},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--titles", default=str(ROOT / "data" / "titles.txt"))
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--dump", default=None, help="write the rule-passed texts here, shuffled, variant hidden")
    p.add_argument("--dump-variants", default=None, help="semicolon-separated variants to dump (default: all)")
    p.add_argument("--labels", default=str(ROOT / "tests" / "data" / "source_variant_labels.jsonl"),
                   help="jsonl of {variant, title, polarity, review, valid, label}: labels of the dumped texts (a "
                        "label counts only where its text is the one this run generated)")
    p.add_argument("--out", default=str(ROOT / ".state" / "source_variants.json"), help="generated texts (reused)")
    a = p.parse_args()

    import polars as pl

    from prefsynth.build import BuildConfig
    from prefsynth.cli import quiet_libraries
    from prefsynth.collect import CollectConfig, collect
    from prefsynth.filters import flag_generations
    from prefsynth.generate import GenerateConfig, generation_key, prompt_for, request_seed
    from prefsynth.model import resolve_model
    from prefsynth.noise import wilson
    from prefsynth.prompts import POLARITIES, PromptConfig, Templates
    from prefsynth.text_judge import TextJudge
    from prefsynth.validity import validity_flags

    quiet_libraries()
    templates = Templates(PromptConfig())
    cfg = GenerateConfig(model="bundled", temperature=0.5)  # the labels are of the bundled model's texts
    titles = collect(CollectConfig(source=a.titles, n=a.n, seed=a.seed)).titles
    out = Path(a.out)
    run = json.loads(out.read_text()) if out.exists() else {}
    if run.get("titles") != titles or set(run.get("seconds", {})) != set(VARIANTS):
        from vllm import SamplingParams

        from prefsynth.engines import close_backends, get_backend

        model = resolve_model(cfg.model)
        backend = get_backend(model, cfg)
        # Seeds from the keys of the sampling these variants started from, so they do not move with the defaults.
        seeded = GenerateConfig(model="bundled", **BASE, repetition_penalty=1.0, stop=[])
        jobs = [(t, pol, generation_key(model, templates, seeded, t, pol)) for t in titles for pol in POLARITIES]
        prompts = [prompt_for(backend, templates, cfg, t, pol) for t, pol, _ in jobs]
        run = {"titles": titles, "rows": [], "seconds": {}, "tokens": {}}
        for name, over in VARIANTS.items():
            kw = BASE | over
            params = [SamplingParams(seed=request_seed(k), **kw) for _, _, k in jobs]
            t0 = time.time()
            res = backend.llm.generate(prompts, params, use_tqdm=False)
            run["seconds"][name] = time.time() - t0
            run["tokens"][name] = sum(len(r.outputs[0].token_ids) for r in res)
            for (t, pol, _), r in zip(jobs, res):
                o = r.outputs[0]
                run["rows"].append({"variant": name, "title": t, "polarity": pol, "text": cfg.opening + o.text,
                                    "finish_reason": o.finish_reason, "completion_tokens": len(o.token_ids)})
            print(f"{name}: {run['tokens'][name]} tokens in {run['seconds'][name]:.1f} s", file=sys.stderr)
        close_backends()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(run))

    df = pl.DataFrame(run["rows"]).with_columns(pl.lit("").alias("key"))
    parts = []
    for name in VARIANTS:  # the filters compare reviews across titles, so each variant is flagged on its own
        f = flag_generations(df.filter(pl.col("variant") == name), templates, BuildConfig())
        parts.append(validity_flags(f, templates))
    df = pl.concat(parts)
    judge = TextJudge.load()
    df = df.with_columns(pl.Series("p_neg", judge.p_negative(df.get_column("review").to_list())))
    df = df.with_columns((pl.col("bad") | pl.col("invalid")).alias("rejected"),
                         ((pl.col("p_neg") > 0.5) == (pl.col("polarity") == "negative")).alias("tone_ok"))
    df = df.with_columns(pl.format("{}|{}|{}", "variant", "title", "polarity").alias("id"))

    labels: dict[tuple[str, str], dict] = {}
    if a.labels and Path(a.labels).exists():
        for line in Path(a.labels).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                labels[(f"{r['variant']}|{r['title']}|{r['polarity']}", r["review"])] = r
    passed = df.filter(~pl.col("rejected"))
    # the bundled model's settings (cfg) in the terms of VARIANTS (off settings left out), to mark that variant
    defaults = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens} | (
        {"repetition_penalty": cfg.repetition_penalty} if cfg.repetition_penalty != 1.0 else {}) | (
        {"stop": cfg.stop_strings()} if cfg.stop_strings() else {})
    if a.dump:
        chosen = a.dump_variants.split(";") if a.dump_variants else list(VARIANTS)
        rows = [{"id": r["id"], "title": r["title"], "review": r["review"]} for r in passed.iter_rows(named=True)
                if r["variant"] in chosen]
        random.Random(0).shuffle(rows)
        Path(a.dump).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} texts to label to {a.dump} (variant and asked polarity hidden)", file=sys.stderr)

    lines = [f"{len(titles)} titles x 2 polarities per variant, one sample each, same seeds; texts the rules reject: "
             f"any filter (build) or validity rule; tone ok: the text judge agrees with the asked tone",
             f"{'variant':32} {'tokens':>7} {'s':>6} {'rejected neg':>13} {'rejected pos':>13} {'tone ok':>8} "
             f"{'labelled':>8}  valid+polarised among passed (; of all samples, when every passed text is labelled)"]
    print("\n".join(lines))
    for name in VARIANTS:
        v = df.filter(pl.col("variant") == name)
        rej = {pol: v.filter(pl.col("polarity") == pol).get_column("rejected").mean() for pol in POLARITIES}
        vp = v.filter(~pl.col("rejected"))
        lab = [labels[(i, text)] | {"asked": pol}
               for i, text, pol in zip(vp.get_column("id"), vp.get_column("review"), vp.get_column("polarity"))
               if (i, text) in labels]
        good = sum(1 for r in lab if r["valid"] and r["label"] == r["asked"])
        lo, hi = wilson(good, len(lab)) if lab else (float("nan"), float("nan"))
        share = f"{good}/{len(lab)} = {good / len(lab):.0%} [{lo:.0%}, {hi:.0%}]" if lab else "-"
        if lab and len(lab) == vp.height:  # every passed text read: good / samples is the share of all samples
            share += f"; {good / v.height:.0%}"
        label = name + (" (bundled model's setting)" if BASE | VARIANTS[name] == defaults else "")
        lines.append(f"{label:32} {run['tokens'][name]:7d} {run['seconds'][name]:6.1f} {rej['negative']:13.2f} "
                     f"{rej['positive']:13.2f} {vp.get_column('tone_ok').mean() or 0:8.2f} {len(lab):8d}  {share}")
        print(lines[-1])
    results = ROOT / "bench" / "results" / "source_variants.txt"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
