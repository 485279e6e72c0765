#!/usr/bin/env python3
"""Fit the text judge (src/prefsynth/text_judge.py) on real ICLR reviews: data/judge/text_judge.json.gz.

Offline and once: it reads the same raw downloads as scripts/collect_real_reviews.py (RAW/iclr-analysis/Data/{2019,
2020}, copies of Pseudomanifold/iclr-analysis; RAW/PeerRead is not needed) and needs scikit-learn and scipy, which
the project does not install (scoring needs numpy only): run it from any venv that has them, e.g.

    python3 -m venv /tmp/tj && /tmp/tj/bin/pip install scikit-learn numpy
    /tmp/tj/bin/python scripts/train_text_judge.py /tmp/raw_reviews

The pool: every ICLR 2019/2020 review of a paper on the dev side of the real-review split (frac < 0.4, the rule of
collect_real_reviews.py), borderline ratings included, normalised and de-duplicated by that script's own functions,
plus the PeerRead rows of data/real_reviews/dev.jsonl. No paper of data/real_reviews/test.jsonl is in it (asserted).
ICLR 2017 is never read. Model: TF-IDF word 1-2-grams (min_df 5, sublinear tf, L2 rows), ridge (alpha 1) on the
rating z-scored per source, threshold 0.1 z folded into the intercept; these were chosen by 5-fold cross-validation
grouped by paper, on the pool alone. The logistic slope that turns the score into P(negative) is fitted on the
cross-validated scores of the labelled rows. Test accuracy is measured by `make judge-eval`, never here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKEN = r"(?u)\b\w\w+\b"
MIN_DF, ALPHA, THRESHOLD, FOLDS = 5, 1.0, 0.1, 5


def _collector():
    spec = importlib.util.spec_from_file_location("collect_real_reviews", ROOT / "scripts" / "collect_real_reviews.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pool(raw: str) -> list[dict]:
    crr = _collector()
    test = [json.loads(x) for x in (ROOT / "data" / "real_reviews" / "test.jsonl").read_text().splitlines() if x]
    test_papers = {(r["source"], r["paper_id"]) for r in test}
    rows, seen = [], set()
    for reader in (crr.read_iclr(raw, "2019"), crr.read_iclr(raw, "2020")):
        for rec in reader:
            rec["review"] = crr.normalise(rec["review"])
            if not crr.long_enough(rec["review"]) or rec["review"] in seen:
                continue
            seen.add(rec["review"])
            if crr.frac(f"{rec['source']}|{rec['paper_id']}") >= crr.DEV_FRACTION:
                continue
            assert (rec["source"], rec["paper_id"]) not in test_papers
            rows.append(rec)
    dev = [json.loads(x) for x in (ROOT / "data" / "real_reviews" / "dev.jsonl").read_text().splitlines() if x]
    rows += [r for r in dev if r["source"].startswith("PeerRead/")]
    return rows


def zscores(rows: list[dict]) -> np.ndarray:
    src = np.array([r["source"] for r in rows])
    score = np.array([float(r["score"]) for r in rows])
    z = np.zeros(len(rows))
    for s in set(src):
        k = src == s
        z[k] = (score[k] - score[k].mean()) / score[k].std()
    return z


def fit(counts, z: np.ndarray):
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import normalize

    df = np.asarray((counts > 0).sum(0)).ravel()
    keep = np.where(df >= MIN_DF)[0]
    idf = np.log((1 + counts.shape[0]) / (1 + df[keep])) + 1
    model = Ridge(alpha=ALPHA, solver="sparse_cg", tol=1e-6).fit(_tfidf(counts[:, keep], idf, normalize), z)
    return keep, idf, model.coef_.ravel(), float(model.intercept_) - THRESHOLD


def _tfidf(counts, idf, normalize):
    x = counts.astype(np.float64, copy=True)
    x.data = 1 + np.log(x.data)
    return normalize(x.multiply(idf).tocsr())


def logistic_slope(score: np.ndarray, negative: np.ndarray) -> float:
    """The k of P(negative) = 1 / (1 + exp(k * score)) that maximises the likelihood (Newton's method)."""
    k = 1.0
    for _ in range(50):
        p = 1 / (1 + np.exp(np.clip(k * score, -50, 50)))
        grad = np.sum((negative - p) * score)  # d(-loglik)/dk, since dp/dk = -score p (1 - p)
        hess = np.sum(p * (1 - p) * score**2)
        k -= grad / hess
    return float(k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", help="folder of raw downloads (see scripts/collect_real_reviews.py)")
    ap.add_argument("--out", default=str(ROOT / "data" / "judge" / "text_judge.json.gz"))
    args = ap.parse_args(argv)
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    rows = pool(args.raw)
    z = zscores(rows)
    cv = CountVectorizer(lowercase=True, ngram_range=(1, 2), token_pattern=TOKEN)
    counts = cv.fit_transform([r["review"] for r in rows]).tocsr()
    folds = np.array([int(hashlib.sha256(f"fold|{r['source']}|{r['paper_id']}".encode()).hexdigest()[:8], 16) % FOLDS
                      for r in rows])
    oof = np.zeros(len(rows))
    for f in range(FOLDS):
        tr, te = folds != f, folds == f
        keep, idf, coef, b = fit(counts[tr], z[tr])
        oof[te] = _tfidf(counts[te][:, keep], idf, normalize) @ coef + b
    labelled = np.array([r["label"] in ("negative", "positive") for r in rows])
    negative = np.array([r["label"] == "negative" for r in rows])
    slope = logistic_slope(oof[labelled], negative[labelled])
    acc = float(np.mean((oof[labelled] < 0) == negative[labelled]))
    keep, idf, coef, b = fit(counts, z)
    model = {"kind": "tfidf-ridge", "ngram": 2, "token_pattern": TOKEN, "n_train": len(rows),
             "settings": {"min_df": MIN_DF, "alpha": ALPHA, "threshold": THRESHOLD, "cv_accuracy": round(acc, 4),
                          "cv_labelled": int(labelled.sum())},
             "slope": round(slope, 4), "terms": [str(t) for t in cv.get_feature_names_out()[keep]],
             "idf": [round(float(v), 5) for v in idf], "coef": [round(float(v), 6) for v in coef], "intercept": b}
    Path(args.out).write_bytes(gzip.compress(json.dumps(model, separators=(",", ":")).encode(), mtime=0))
    print(f"{len(rows)} reviews ({int(labelled.sum())} labelled), {len(keep)} terms; cross-validated accuracy "
          f"{acc:.3f} on the labelled rows; slope {slope:.3f}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
