"""The trained polarity judge: a logistic-regression head over what one judge prompt already computes.

The judge prompt asks the model about the review and we read the log-probabilities of a few dozen answer words at
the answer position (one forward pass, no sampling; "negative", "reject", "weak", "accept", ...). Those numbers
are a fixed projection of the model's last hidden state; a linear head over them, plus VADER's three scores,
is trained on the *dev* part of the real-review set (`data/real_reviews/`, labelled by the reviewers' own
recommendation scores) and reported on the test part, which it never sees (`prefsynth judge-eval`). It is a
different judge from the prompt alone: it learned from real reviewers what the model's answer words mean.

The head is tied to one model and one judge template (their fingerprints are stored with the weights); with any
other model or template the judge falls back to the untrained LLM + lexicon combination and says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prefsynth.constants import ROOT

HEAD_FILE = ROOT / "data" / "judge" / "polarity_head.json"

# Answer words whose log-probabilities are the head's inputs: the label words, verdict words and the adjectives a
# reviewer's verdict uses. Each is read in the spellings the tokenizer has (with and without a leading space).
ANSWER_WORDS = ("negative", "positive", "Negative", "Positive", "reject", "accept", "Reject", "Accept", "weak",
                "strong", "poor", "good", "bad", "great", "excellent", "flawed", "unclear", "clear", "novel",
                "limited", "interesting", "yes", "no", "not", "solid", "impressive", "disappointing", "marginal",
                "promising", "insufficient", "convincing", "unconvincing", "concerns", "well")
LEXICON_FEATURES = ("vader_neg", "vader_pos", "vader_compound")


def answer_token_ids(tokenizer, words: tuple[str, ...] = ANSWER_WORDS) -> list[int]:
    """First token of each word, with and without a leading space, each token once, in a stable order."""
    ids: list[int] = []
    for w in words:
        for variant in (w, " " + w):
            toks = tokenizer.encode(variant, add_special_tokens=False)
            if toks and toks[0] not in ids:
                ids.append(toks[0])
    return ids


def normalise(logprobs: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalised over the answer tokens (rows: reviews), so a review that makes the model
    less sure of *any* answer word does not shift every feature at once. -inf (token absent) becomes -50."""
    lp = np.maximum(np.asarray(logprobs, dtype=np.float64), -50.0)
    m = lp.max(axis=1, keepdims=True)
    return lp - (m + np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method on standardised features (bias unpenalised)."""
    z = np.c_[x, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    reg = np.r_[np.full(x.shape[1], l2), 0.0]
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


@dataclass
class PolarityHead:
    token_ids: list[int]
    mean: list[float]
    std: list[float]
    weights: list[float]
    bias: float
    model_fingerprint: str
    template_hash: str
    trained: dict = field(default_factory=dict)  # what it was trained on, l2, dev cross-validation accuracy

    def features(self, logprobs: np.ndarray, lexicon: np.ndarray) -> np.ndarray:
        return np.c_[normalise(logprobs), np.asarray(lexicon, dtype=np.float64)]

    def predict(self, logprobs: np.ndarray, lexicon: np.ndarray) -> np.ndarray:
        """P(negative) for each review."""
        x = (self.features(logprobs, lexicon) - np.array(self.mean)) / np.array(self.std)
        return 1 / (1 + np.exp(-np.clip(x @ np.array(self.weights) + self.bias, -30, 30)))

    def fits(self, model_fingerprint: str, template_hash: str) -> bool:
        return self.model_fingerprint == model_fingerprint and self.template_hash == template_hash

    @classmethod
    def train(cls, logprobs: np.ndarray, lexicon: np.ndarray, negative: np.ndarray, token_ids: list[int],
              model_fingerprint: str, template_hash: str, l2: float, trained: dict) -> PolarityHead:
        raw = np.c_[normalise(logprobs), np.asarray(lexicon, dtype=np.float64)]
        mean, std = raw.mean(axis=0), raw.std(axis=0) + 1e-6
        w, b = fit_logistic((raw - mean) / std, np.asarray(negative, dtype=np.float64), l2)
        return cls(list(token_ids), mean.tolist(), std.tolist(), w.tolist(), b, model_fingerprint, template_hash,
                   trained)

    def save(self, path: Path = HEAD_FILE) -> None:
        from prefsynth.fsutil import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path = HEAD_FILE) -> PolarityHead | None:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @property
    def fingerprint(self) -> str:
        import hashlib

        blob = json.dumps([self.token_ids, self.weights, self.bias, self.mean, self.std], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cross_validated_accuracy(logprobs: np.ndarray, lexicon: np.ndarray, negative: np.ndarray, l2: float,
                             folds: int = 5) -> float:
    """k-fold accuracy on the training data (folds by position: callers pass rows in a seeded order)."""
    n = len(negative)
    right = 0
    for k in range(folds):
        test = np.arange(n) % folds == k
        head = PolarityHead.train(logprobs[~test], lexicon[~test], negative[~test], [], "", "", l2, {})
        right += int(((head.predict(logprobs[test], lexicon[test]) > 0.5) == negative[test].astype(bool)).sum())
    return right / n if n else math.nan
