"""The text judge: polarity from the words of a review, learned from 4,870 real ICLR reviews.

A linear model on TF-IDF word unigrams and bigrams (sublinear tf, L2-normalised rows), fitted by ridge regression to
the reviewer's own rating (z-scored per venue) on reviews of papers that are on the dev side of the real-review
split (no paper of data/real_reviews/test.jsonl). `scripts/train_text_judge.py` fits it offline; this module only
scores, with numpy. It runs in microseconds per review, needs no engine, and is independent of the generating
model: the second judge the build combines with the head (judge.text).

Its score is the predicted rating (z units, threshold already folded in): > 0 positive. `p_negative` maps it to a
probability with a logistic slope fitted on cross-validated scores of the training pool.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from prefsynth.constants import ROOT
from prefsynth.tfidf import Tfidf

MODEL = ROOT / "data" / "judge" / "text_judge.json.gz"


class TextJudge:
    def __init__(self, model: dict, fingerprint: str):
        self.fingerprint = fingerprint
        self.tfidf = Tfidf(model["terms"], model["idf"], int(model["ngram"]), model["token_pattern"])
        self.coef = np.asarray(model["coef"], dtype=np.float64)
        self.intercept = float(model["intercept"])
        self.slope = float(model.get("slope", 1.0))
        self.info = {k: model[k] for k in ("kind", "n_train", "settings", "slope") if k in model}

    @staticmethod
    @functools.cache
    def load(path: Path = MODEL) -> TextJudge | None:
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        return TextJudge(json.loads(gzip.decompress(data)), hashlib.sha256(data).hexdigest()[:16])

    def score(self, text: str) -> float:
        """The predicted rating, in z units; > 0 reads positive."""
        idx, v = self.tfidf.vector(text)
        return float(v @ self.coef[idx] + self.intercept)

    def p_negative(self, texts: list[str]) -> list[float]:
        return [1.0 / (1.0 + math.exp(max(-50.0, min(50.0, self.slope * self.score(t))))) for t in texts]
