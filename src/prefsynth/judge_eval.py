"""How right are the polarity judges? Accuracy with 95% intervals on reviews whose polarity is known; training the
head on the real-review dev part.

Sets (`EVAL_SETS`): `real-test` (real reviews, labelled by the reviewer's recommendation; reported, never tuned
on; the head is trained on the dev part, `TRAIN_SET`, and the text judge on ICLR reviews of dev-side papers, which
include that part), `synthetic` (short reviews
written for prefsynth, with sarcastic and mixed ones) and `generated` (reviews this pipeline generated, labelled by
reading them; tests/data/validity_labels.jsonl). `prefsynth judge-eval` prints the table and writes
`data/judge/measured.json`, which the build reads to say in the card how far its noise figures can be trusted.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefsynth.constants import ROOT
from prefsynth.errors import UserError
from prefsynth.fsutil import atomic_write_text
from prefsynth.judge import (JudgeConfig, active_text_judge, cascade, combined_score, excerpt, lexicon_features,
                             lexicon_scores, llm_scores, score_reviews, with_text)
from prefsynth.noise import wilson
from prefsynth.polarity_head import PolarityHead, answer_token_ids, cross_validated_accuracy
from prefsynth.prompts import Templates

EVAL_SETS = {
    "real-test": ROOT / "data" / "real_reviews" / "test.jsonl",
    "synthetic": ROOT / "data" / "judge" / "synthetic_eval.jsonl",
    "generated": ROOT / "tests" / "data" / "validity_labels.jsonl",
}
TRAIN_SET = ROOT / "data" / "real_reviews" / "dev.jsonl"  # the head's training data; `--set real-dev=...` reports it
MEASURED = ROOT / "data" / "judge" / "measured.json"
L2_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def load_set(path: Path) -> list[dict]:
    """Rows with `review` and `label` (negative/positive); rows of other labels (mixed, neutral) are skipped, and so
    are texts a judge already chose (`judge_selected`: e.g. kept pairs, which passed the consistency check), since
    scoring a judge on texts picked for agreeing with it would flatter it."""
    if not Path(path).exists():
        return []
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("label") in ("negative", "positive") and not r.get("judge_selected")]


@dataclass
class Scores:
    llm: list[float]
    lexicon: list[float]
    head: list[float]
    logprobs: np.ndarray  # the head's answer-token log-probabilities (rows: reviews)
    lexf: np.ndarray  # VADER features


def score_set(backend, templates: Templates, reviews: list[str], cfg: JudgeConfig,
              head: PolarityHead | None) -> Scores:
    """Every judge's score, plus the raw head features, for a list of reviews (one engine pass)."""
    n = len(reviews)
    llm, lex, hd = [float("nan")] * n, [float("nan")] * n, [float("nan")] * n
    rows: list[list[float]] = [[] for _ in range(n)]
    for i, a, b, c, lps in score_reviews(backend, templates, reviews, cfg, head):
        llm[i], lex[i], hd[i], rows[i] = a, b, c, lps
    logprobs = np.array(rows, dtype=np.float64) if backend is not None else np.zeros((n, 0))
    lexf = np.array(lexicon_features([excerpt(r, cfg.max_words) for r in reviews])).reshape(n, 3)
    return Scores(llm, lex, hd, logprobs, lexf)


def accuracy(scores: list[float], negative: list[bool]) -> dict:
    """Accuracy with its 95% Wilson interval; a score of exactly 0.5 (undecided) counts as half right. Also the
    sensitivity and specificity for 'negative', which the noise estimate needs."""
    pairs = [(s, t) for s, t in zip(scores, negative) if s == s]  # nan: this judge did not run
    if not pairs:
        return {}
    right = sum(0.5 if s == 0.5 else float((s > 0.5) == t) for s, t in pairs)
    n = len(pairs)
    neg = [s for s, t in pairs if t]
    pos = [s for s, t in pairs if not t]
    lo, hi = wilson(right, n)
    return {"accuracy": round(right / n, 4), "low": round(lo, 4), "high": round(hi, 4), "n": n,
            "sensitivity": round(sum(s > 0.5 for s in neg) / len(neg), 4) if neg else None,
            "sensitivity_n": len(neg),
            "specificity": round(sum(s < 0.5 for s in pos) / len(pos), 4) if pos else None,
            "specificity_n": len(pos)}


def evaluate(backend, templates: Templates, cfg: JudgeConfig, head: PolarityHead | None,
             sets: dict[str, Path] = EVAL_SETS) -> dict:
    report: dict = {"sets": {}, "judges": {}}
    for name, path in sets.items():
        rows = load_set(path)
        if not rows:
            continue
        truth = [r["label"] == "negative" for r in rows]
        s = score_set(backend, templates, [r["review"] for r in rows], cfg, head)
        judges = {"lexicon": s.lexicon}
        if backend is not None:
            judges["llm"] = s.llm
            judges["combined"] = [combined_score(a, b, cfg.llm_weight) for a, b in zip(s.llm, s.lexicon)]
            if head is not None:
                judges["head"] = s.head
        if (text := active_text_judge(cfg)) is not None:
            judges["text"] = t = text.p_negative([r["review"] for r in rows])
            base = "head" if "head" in judges else "combined" if "combined" in judges else "lexicon"
            judges[f"{base}+text"] = [with_text(b, x, cfg.text_weight) for b, x in zip(judges[base], t)]
            if base != "lexicon" and cfg.text_sure < 0.5:  # the build's verdict: the text judge alone where sure
                judges[f"{base}+text sure {cfg.text_sure:g}"] = [cascade(b, x, cfg.text_weight, cfg.text_sure)
                                                                 for b, x in zip(judges[base], t)]
        report["sets"][name] = {"n": len(rows), "negative": sum(truth), "path": str(Path(path).relative_to(ROOT))}
        for judge, vals in judges.items():
            report["judges"].setdefault(judge, {})[name] = accuracy(vals, truth)
    return report


def table(report: dict, trained_on: str | None) -> list[str]:
    sets = list(report["sets"])
    w = max([9, *map(len, report["judges"])])
    head = f"{'judge':{w}}" + "".join(f" {s + ' (n=' + str(report['sets'][s]['n']) + ')':>26}" for s in sets)
    lines = [head]
    for judge, by_set in report["judges"].items():
        cells = []
        for s in sets:
            a = by_set.get(s)
            mark = "*" if ("head" in judge or "text" in judge) and s == trained_on else " "
            cells.append(f" {a['accuracy']:.3f} [{a['low']:.3f}, {a['high']:.3f}]{mark}".rjust(26) if a else
                         " " * 26)
        lines.append(f"{judge:{w}}" + "".join(cells))
    if trained_on in sets:
        lines.append(f"* trained on {trained_on}: not a measurement")
    return lines


def train_head(backend, templates: Templates, cfg: JudgeConfig, model_fingerprint: str,
               path: Path = TRAIN_SET) -> PolarityHead:
    """Fit the head on the real-review dev part; the L2 strength by 5-fold cross-validation on it."""
    rows = load_set(path)
    if not rows:
        raise UserError(f"no training reviews in {path}")
    if backend is None:
        raise UserError("training the head needs the LLM judge's engine (not --backend none)")
    s = score_set(backend, templates, [r["review"] for r in rows], cfg, None)
    y = np.array([r["label"] == "negative" for r in rows])
    order = np.array(random.Random(0).sample(range(len(rows)), len(rows)))
    cv = {l2: cross_validated_accuracy(s.logprobs[order], s.lexf[order], y[order], l2) for l2 in L2_GRID}
    best = max(L2_GRID, key=lambda l2: (round(cv[l2], 4), l2))  # ties: the stronger regulariser
    return PolarityHead.train(
        s.logprobs, s.lexf, y, answer_token_ids(backend.tokenizer), model_fingerprint, templates.hash_for("judge"),
        best, {"set": str(Path(path).relative_to(ROOT)), "n": len(rows), "l2": best,
               "cv_accuracy": {str(k): round(v, 4) for k, v in cv.items()}, "max_words": cfg.max_words})


def write_measured(report: dict, head: PolarityHead | None, model_fingerprint: str, template_hash: str) -> None:
    text = active_text_judge(JudgeConfig())
    data = {"model_fingerprint": model_fingerprint, "template_hash": template_hash,
            "head": head.fingerprint if head else None, "text": text.fingerprint if text else None,
            "sets": report["sets"], "judges": report["judges"]}
    MEASURED.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(MEASURED, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_measured() -> dict:
    try:
        return json.loads(MEASURED.read_text())
    except (OSError, ValueError):
        return {}


def by_kind(rows: list[dict], backend, templates: Templates, cfg: JudgeConfig) -> dict:
    """Plain accuracy of the lexicon, LLM (raw and calibrated) and combined judges on a set, overall and per kind
    (plain, sarcastic, mixed, ...): what the tests hold the judges to on the synthetic set.

    A score of exactly 0.5 is "undecided" and counts as half right, the expected score of breaking the tie with a
    coin: a judge that says nothing scores chance (0.5), never more. `undecided` reports how often that happened.
    """
    texts = [r["review"] for r in rows]
    truth = [r["label"] == "negative" for r in rows]
    scores: dict[str, list[float]] = {"lexicon": lexicon_scores(texts)}
    if backend is not None:
        scores["llm_raw"] = llm_scores(backend, templates, texts, calibrate=False)
        scores["llm"] = llm_scores(backend, templates, texts, calibrate=True)
        scores["combined"] = [combined_score(a, b, cfg.llm_weight) for a, b in zip(scores["llm"], scores["lexicon"])]

    def acc(vals: list[float], idx: list[int]) -> float:
        right = sum(0.5 if vals[i] == 0.5 else float((vals[i] > 0.5) == truth[i]) for i in idx)
        return round(right / len(idx), 4)

    kinds = sorted({r.get("kind", "all") for r in rows})
    out: dict = {"n": len(rows), "negative": sum(truth), "accuracy": {}, "by_kind": {}, "undecided": {}}
    everything = list(range(len(rows)))
    for name, vals in scores.items():
        out["accuracy"][name] = acc(vals, everything)
        out["undecided"][name] = sum(v == 0.5 for v in vals)
        out["by_kind"][name] = {k: acc(vals, [i for i, r in enumerate(rows) if r.get("kind", "all") == k])
                                for k in kinds}
    return out
