"""The quality figures a build prints and writes into its card: which judge labelled the data, how right that
judge was measured to be, and what that means for the kept rows (noise and validity, with 95% intervals).

Measured figures come from files that `make judge-eval` (polarity judges) and `make validity-eval` (validity rules)
write under data/judge/; a build whose judge or rules differ from the measured ones says "not measured" instead of
borrowing a number that is not its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefsynth.constants import ROOT
from prefsynth.noise import Accuracy, Estimate, kept_precision, pair_noise, wilson

VALIDITY_MEASURED = ROOT / "data" / "judge" / "validity.json"
# Which measured set stands for the build's own reviews: hand-labelled generated reviews first, real reviews second.
PREFERRED_SETS = ("generated", "real-test")


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def parse_judge(judge: str) -> tuple[str, str | None, str | None]:
    """(measured name, head fingerprint, text-judge fingerprint) of a judge stage's `judge` string, e.g.
    'head 04a4a10f11fdefee + text 1b2c... sure 0.4' -> ('head+text sure 0.4', '04a4a10f11fdefee', '1b2c...')
    (sure: the text judge decides alone where it is that sure, judge.text_sure)."""
    base, _, text = judge.partition(" + text ")
    text, _, sure = text.partition(" sure ")
    head = base.split(" ", 1)[1] if base.startswith("head ") else None
    name = "head" if head else "combined" if base == "llm+lexicon" else base
    name = f"{name}+text" if text else name
    return (f"{name} sure {sure}" if sure else name), head, (text or None)


def judge_accuracy(judge: str, model_fingerprint: str, template_hash: str) -> dict:
    """The measured accuracy of the judge that labelled a build, per set; {} when none was measured for it."""
    from prefsynth.judge_eval import MEASURED

    m = _read(MEASURED)
    if m.get("model_fingerprint") != model_fingerprint or m.get("template_hash") != template_hash:
        return {}
    name, head, text = parse_judge(judge)
    if (head and m.get("head") != head) or (text and m.get("text") != text):
        return {}
    return {"judge": name, **(m.get("judges", {}).get(name) or {})}


def noise_estimate(stats: dict, accuracy: dict, chosen: str) -> dict:
    """Estimated share of kept pairs whose chosen or rejected review is not of its labelled polarity."""
    for name in PREFERRED_SETS:
        a = accuracy.get(name)
        if a and a.get("sensitivity") is not None and a.get("specificity") is not None:
            break
    else:
        return {}
    neg = Accuracy(a["sensitivity"], a["sensitivity_n"], a["specificity"], a["specificity_n"])
    pos = Accuracy(a["specificity"], a["specificity_n"], a["sensitivity"], a["sensitivity_n"])  # 'positive' as X
    c_acc, r_acc = (neg, pos) if chosen == "negative" else (pos, neg)
    sides = stats.get("judged_sides") or {}
    if not sides.get("chosen_total") or not sides.get("rejected_total"):
        return {}
    c = kept_precision(sides["chosen_ok"], sides["chosen_total"], c_acc)
    r = kept_precision(sides["rejected_ok"], sides["rejected_total"], r_acc)
    return {"pair_noise": pair_noise(c, r).as_dict(), "chosen_correct": c.as_dict(),
            "rejected_correct": r.as_dict(), "measured_on": name}


def sampling_key(sampling: dict) -> str:
    """The sampling settings a text was made with, as one comparable string (the seed left out: it only picks which
    sample, not how texts are sampled). A "model" entry names a writer other than the bundled model."""
    return json.dumps({k: v for k, v in sampling.items() if k != "seed"}, sort_keys=True)


def opening_tag(opening: str) -> dict:
    """What joins the sampling key for texts that start with other words than the plain opening (labels made before
    openings could differ carry no tag)."""
    from prefsynth.generate import PLAIN_OPENING

    return {} if opening == PLAIN_OPENING else {"opening": opening}


def cut_tag(max_sentences: int) -> dict:
    """What joins the sampling key for texts cut to their first sentences (`generate.max_sentences`)."""
    return {"max_sentences": max_sentences} if max_sentences > 0 else {}


def writer_tag(name: str, fingerprint: str) -> dict:
    """What joins the sampling key for texts of a model other than the bundled one (labels made before the writer
    carry no tag: they were all written by the bundled model)."""
    from prefsynth.model import BUNDLED_NAME

    return {} if name == BUNDLED_NAME else {"model": f"{name}@{fingerprint[:12]}"}


def validity_estimate(rules_version: str, sampling: dict | None = None) -> dict:
    """Share of the reviews the validity checks keep that a reader found valid, from the labelled sample, when the
    checks match (`rules_version`: the rules', with the scorer's when it is on): on the labelled texts sampled with
    `sampling` when there are any, else on all of them (and it says so)."""
    v = _read(VALIDITY_MEASURED)
    if v.get("rules_version") != rules_version:  # the rules and the scorer: measured on texts it never saw
        v = v.get("with_scorer") or {}
    if v.get("rules_version") != rules_version or not v.get("rule_valid"):
        return {}
    same = (v.get("by_sampling") or {}).get(sampling_key(sampling or {}))
    m = same if same and same.get("rule_valid") else v
    lo, hi = wilson(m["rule_valid_truly_valid"], m["rule_valid"])
    out = {"value": round(m["rule_valid_truly_valid"] / m["rule_valid"], 4), "low": round(lo, 4),
           "high": round(hi, 4), "n": m["rule_valid"], "labelled": m.get("labelled"), "same_sampling": m is same}
    if m is same and "rule_valid_polarised" in m:  # per setting only: the tone depends on how texts were sampled
        k = m["rule_valid_polarised"]
        plo, phi = wilson(k, m["rule_valid"])
        out["polarised"] = {"value": round(k / m["rule_valid"], 4), "low": round(plo, 4), "high": round(phi, 4)}
    return out


def describe(q: dict) -> list[str]:
    """Plain lines for the run summary and the card."""
    lines = []
    acc = q.get("judge_accuracy") or {}
    judge = q.get("judge", "?")
    shown = [f"{s} {a['accuracy']:.1%} [{a['low']:.1%}, {a['high']:.1%}] (n={a['n']})"
             for s, a in acc.items() if isinstance(a, dict) and "accuracy" in a and s != "real-dev"]
    on = f" on {q['judge_model']}" if q.get("judge_model") else ""
    lines.append(f"polarity judge: {judge}{on}; measured accuracy: " + ("; ".join(shown) if shown else "not measured "
                 "for this model and judge (run make judge-eval)"))
    n = q.get("noise") or {}
    if n:
        p = n["pair_noise"]
        lines.append(f"label noise in kept pairs (estimated from the judge's accuracy on {n['measured_on']}): "
                     f"{Estimate(p['value'], p['low'], p['high'])}")
    v = q.get("validity") or {}
    if v:
        sample = "texts sampled like these" if v.get("same_sampling") else "texts sampled with other settings"
        lines.append(f"valid reviews among those the validity rules keep (hand-labelled {sample}, n={v['n']}): "
                     f"{Estimate(v['value'], v['low'], v['high'])}")
        if p := v.get("polarised"):
            lines.append(f"valid and of the asked tone, read by hand (mixed and neutral texts count as not; the label "
                         f"noise above counts flipped tone only): {Estimate(p['value'], p['low'], p['high'])}")
    return lines
