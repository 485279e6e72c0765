"""The validity scorer: how likely a generated text is not a valid review, learned from the texts read by hand.

The rules (validity.py) name a reason and see each failure only in the forms written into them; most of what a
reader rejects after them is the writer's own nonsense, invented track records and wrong subjects, in words no rule
lists. This is the second check: logistic regression on TF-IDF words (prefsynth.tfidf) fitted to the hand labels
of the label files the writer is trained on (`make writer`'s), giving P(not valid) per text in microseconds, with
no engine. A build drops texts above `build.max_p_invalid` as `scored_invalid`, and the candidate rounds then
sample another candidate for that review (rounds.py). It has no reason to give; what it is worth is measured on
label files it never saw (`prefsynth validity-eval`), and the card's validity figure is measured there.

`prefsynth validity-eval --train` fits it (data/judge/validity_scorer.json.gz) and prints its cross-validated
figures on the training labels (folds grouped by title), which is where the default threshold was chosen.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prefsynth.constants import ROOT
from prefsynth.polarity_head import fit_logistic
from prefsynth.tfidf import Tfidf

SCORER_FILE = ROOT / "data" / "judge" / "validity_scorer.json.gz"
SCORED = "low_validity_score"  # the reason a dropped text carries
NGRAM, MIN_DF, L2 = 1, 2, 1.0  # chosen by grouped cross-validation on the training labels (docs/quality.md)


@dataclass
class ValidityScorer:
    tfidf: Tfidf
    coef: list[float]
    intercept: float
    trained: dict = field(default_factory=dict)  # label files, counts, settings, cross-validated figures

    def __post_init__(self):
        self._coef = np.asarray(self.coef, dtype=np.float64)

    def p_invalid(self, texts: list[str]) -> np.ndarray:
        z = np.array([float(v @ self._coef[idx]) for idx, v in map(self.tfidf.vector, texts)]) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))) if len(texts) else np.zeros(0)

    @classmethod
    def fit(cls, texts: list[str], invalid: np.ndarray, ngram: int = NGRAM, min_df: int = MIN_DF, l2: float = L2,
            trained: dict | None = None) -> ValidityScorer:
        tfidf = Tfidf.fit(texts, ngram, min_df)
        w, b = fit_logistic(tfidf.matrix(texts), np.asarray(invalid, dtype=np.float64), l2)
        return cls(tfidf, w.tolist(), b, dict(trained or {}, ngram=ngram, min_df=min_df, l2=l2, n=len(texts)))

    def to_bytes(self) -> bytes:
        blob = {"tfidf": self.tfidf.to_dict(), "coef": [round(c, 6) for c in self.coef],
                "intercept": self.intercept, "trained": self.trained}
        return gzip.compress(json.dumps(blob, sort_keys=True).encode(), mtime=0)

    def save(self, path: Path = SCORER_FILE) -> None:
        from prefsynth.fsutil import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.to_bytes())
        load.cache_clear()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


@functools.cache
def load(path: Path = SCORER_FILE) -> ValidityScorer | None:
    """The shipped scorer (None when the file is missing or unreadable: builds then run on the rules alone)."""
    try:
        blob = json.loads(gzip.decompress(Path(path).read_bytes()))
        return ValidityScorer(Tfidf(**blob["tfidf"]), blob["coef"], float(blob["intercept"]), blob.get("trained", {}))
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def active_scorer(max_p_invalid: float) -> ValidityScorer | None:
    """The scorer a build applies at this threshold: none at 1.0 or above, or when no scorer is shipped."""
    return load() if max_p_invalid < 1.0 else None


def checks_version(rules_version: str, max_p_invalid: float) -> str:
    """What the validity checks of a build are: the rules' version, plus the scorer's and its threshold when it is
    on. Measured validity figures belong to one such version (quality.validity_estimate)."""
    scorer = active_scorer(max_p_invalid)
    return rules_version if scorer is None else f"{rules_version}+{scorer.fingerprint}@{max_p_invalid:g}"


def fold_of(group: str, folds: int) -> int:
    """A stable fold per group (a title): texts of one title are never on both sides of a split."""
    return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % folds


def cross_validated(texts: list[str], invalid: np.ndarray, groups: list[str], folds: int = 5,
                    **fit_kw) -> np.ndarray:
    """Out-of-fold P(not valid) for every text, folds grouped by `groups`."""
    fold = np.array([fold_of(g, folds) for g in groups])
    out = np.zeros(len(texts))
    invalid = np.asarray(invalid, dtype=np.float64)
    for k in range(folds):
        tr, te = np.where(fold != k)[0], np.where(fold == k)[0]
        if len(te) == 0 or len(tr) == 0:
            continue
        s = ValidityScorer.fit([texts[i] for i in tr], invalid[tr], **fit_kw)
        out[te] = s.p_invalid([texts[i] for i in te])
    return out
