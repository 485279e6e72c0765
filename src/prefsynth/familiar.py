"""Familiar words: a soft preference among candidates, for the misses no rule can name.

The writer's worst remaining misses put the paper in a subject its title does not have ("insights into how our
brains work" for a visual tracker, "this ancient and timeless technique" for knowledge distillation, "artistic
techniques" for a segmentation method) or drift into a line of its own ("a double-edged sword"). Each is new, so
no list of phrases catches the next one; what they share is a word that neither the title nor the reviews readers
accepted use. A word is *familiar* when it is licensed by the title (same first five letters as a title word) or
occurs in the accepted reviews of at least `MIN_TITLES` other papers (tests/data labels, counted once per paper,
leaving out the words each review got from its own title). `data/judge/familiar_words.json` holds those counts;
`prefsynth validity-eval --familiar` rebuilds it from the labels.

This is a preference, not a validity rule: most texts with an unfamiliar word are fine. On the 1,424 texts of
seeds 20-22, with the words counted from the label files read before them, 115 had one and 18 of those were bad,
against 21 bad in the other 1,309 (`prefsynth validity-eval --familiar`). So with `build.prefer_familiar` a review
whose passing candidate has one gets another candidate sampled (prefsynth.rounds), and that text is kept only when
no candidate without one passes: nothing is dropped for it, at n = 1 nothing changes, and it costs the extra
samples. Tested on 720 fresh titles read blind (seeds 23-25): at n = 4, 665/718 good pairs with it against 649/718
without, 20 titles better and 4 worse (sign test p = 0.0015), for 7.6% more tokens (docs/quality.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import polars as pl

from prefsynth.constants import ROOT
from prefsynth.errors import UserError
from prefsynth.fsutil import atomic_write_text

FAMILIAR_FILE = ROOT / "data" / "judge" / "familiar_words.json"
MIN_TITLES = 2  # accepted reviews of this many papers make a word familiar
STEM = 5  # a title word licenses the words that share its first STEM letters ("human" -> "humanity")
MIN_LEN = 3  # shorter words ("of", "it", "we") are never counted
_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) >= MIN_LEN}


def licensed(title: str) -> set[str]:
    return {w[:STEM] for w in _WORD.findall(title.lower())}


def count_papers(rows: Iterable[dict]) -> dict[str, int]:
    """Word -> number of distinct titles whose accepted (valid) reviews use it beyond their own title's words."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        if not r.get("valid"):
            continue
        own = licensed(r["title"])
        for w in words_of(r["review"]):
            if w[:STEM] not in own:
                seen.setdefault(w, set()).add(r["title"])
    return {w: len(t) for w, t in sorted(seen.items())}


class FamiliarWords:
    def __init__(self, papers: dict[str, int], min_titles: int = MIN_TITLES):
        self.known = frozenset(w for w, n in papers.items() if n >= min_titles)
        self._known = pl.Series(sorted(self.known), dtype=pl.Utf8)
        # which words a build treated as familiar: recorded in its stats, since the counts grow with the labels
        self.fingerprint = hashlib.sha256("\n".join(sorted(self.known)).encode()).hexdigest()[:12]

    def unfamiliar(self, review: str, title: str) -> list[str]:
        own = licensed(title)
        return sorted(w for w in words_of(review) if w not in self.known and w[:STEM] not in own)

    def any_unfamiliar(self, reviews: pl.Series, titles: pl.Series) -> pl.Series:
        """`unfamiliar(review, title)` is not empty, for whole columns at once (no per-row Python: the build stays
        vectorised)."""
        def tokens(col: pl.Series, name: str) -> pl.DataFrame:
            return (pl.DataFrame({name: col.fill_null("").str.to_lowercase().str.extract_all(_WORD.pattern)})
                    .with_row_index("_row").explode(name).drop_nulls(name))

        words = tokens(reviews, "_w").filter(pl.col("_w").str.len_chars() >= MIN_LEN)
        words = words.filter(~pl.col("_w").is_in(self._known.implode()))
        own = tokens(titles, "_t").select("_row", pl.col("_t").str.slice(0, STEM).alias("_s")).unique()
        odd = words.with_columns(pl.col("_w").str.slice(0, STEM).alias("_s")).join(own, on=["_row", "_s"],
                                                                                   how="anti")
        rows = odd.get_column("_row").unique().implode()
        return pl.select(pl.int_range(len(reviews), dtype=pl.UInt32).is_in(rows)).to_series().alias("unfamiliar")


@lru_cache(maxsize=4)
def load(path: Path = FAMILIAR_FILE) -> FamiliarWords:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return FamiliarWords(data["papers"], data["min_titles"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"build.familiar_words: {path} is not a familiar-words file ({type(e).__name__}); "
                        f"`prefsynth validity-eval --familiar` writes one, `--build.prefer_familiar false` "
                        f"turns the preference off") from None


def write(rows: Iterable[dict], files: list[str], path: Path = FAMILIAR_FILE) -> dict:
    data = {"min_titles": MIN_TITLES, "from_files": sorted(files), "papers": count_papers(rows)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(data, indent=0, sort_keys=True) + "\n")
    load.cache_clear()
    return data
