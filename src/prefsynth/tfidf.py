"""TF-IDF word n-grams in numpy: the features of the text judge and of the validity scorer.

Sublinear term frequency (1 + log tf) times a smoothed idf (log((1 + n) / (1 + df)) + 1, scikit-learn's formula, so
the text judge fitted with scikit-learn scores the same here), each row scaled to unit length. Small on purpose: a
vocabulary of a few thousand terms, scored per text in microseconds, with no dependency beyond numpy.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass, field

import numpy as np

TOKEN = r"(?u)\b\w\w+\b"  # scikit-learn's default: words of two or more characters


@dataclass
class Tfidf:
    terms: list[str]
    idf: list[float]
    ngram: int = 1
    token_pattern: str = TOKEN
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self._index = {t: i for i, t in enumerate(self.terms)}
        self._idf = np.asarray(self.idf, dtype=np.float64)
        self._token = re.compile(self.token_pattern)

    def grams(self, text: str) -> list[str]:
        toks = self._token.findall(text.lower())
        return [" ".join(toks[j:j + n]) for n in range(1, self.ngram + 1) for j in range(len(toks) - n + 1)]

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(term indices, unit-length weights) of one text; both empty when it has no known term."""
        counts = collections.Counter(i for g in self.grams(text) if (i := self._index.get(g)) is not None)
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        v = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * self._idf[idx]
        norm = np.linalg.norm(v)
        return idx, (v / norm if norm else v)

    def matrix(self, texts: list[str]) -> np.ndarray:
        """Dense rows (texts x terms): for fitting on a few thousand labelled texts."""
        out = np.zeros((len(texts), len(self.terms)))
        for r, t in enumerate(texts):
            idx, v = self.vector(t)
            out[r, idx] = v
        return out

    @classmethod
    def fit(cls, texts: list[str], ngram: int = 1, min_df: int = 2, token_pattern: str = TOKEN) -> Tfidf:
        """The terms of at least `min_df` texts, in sorted order, with their smoothed idf."""
        probe = cls([], [], ngram, token_pattern)
        df: collections.Counter[str] = collections.Counter()
        for t in texts:
            df.update(set(probe.grams(t)))
        terms = sorted(g for g, c in df.items() if c >= min_df)
        n = len(texts)
        return cls(terms, [math.log((1 + n) / (1 + df[g])) + 1 for g in terms], ngram, token_pattern)

    def to_dict(self) -> dict:
        return {"terms": self.terms, "idf": self.idf, "ngram": self.ngram, "token_pattern": self.token_pattern}
