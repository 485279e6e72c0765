#!/usr/bin/env python3
"""Build the real-review polarity evaluation set (data/real_reviews/).

The set holds peer reviews written by real reviewers, labelled negative or
positive from the reviewer's own recommendation score.  It is used to measure
how well a polarity judge agrees with real reviewers; see
data/real_reviews/README.md for sources, counts and licences.

The script does not touch the network.  It reads a folder of raw files that
were downloaded beforehand, laid out like this:

    RAW/PeerRead/acl_2017/{train,dev,test}/reviews/<paper>.json
    RAW/PeerRead/conll_2016/{train,dev,test}/reviews/<paper>.json
        copies of allenai/PeerRead data/<venue>/<split>/reviews/*.json
    RAW/iclr-analysis/Data/{2019,2020}/<forum id>/<review note id>.json
        copies of Pseudomanifold/iclr-analysis Data/ (OpenReview API dumps)

ICLR 2017 is deliberately not read (it is kept for an independent check).

Rules, applied in this order:
  1. label from the reviewer's own score; borderline scores are dropped
       PeerRead ACL 2017 / CoNLL 2016, RECOMMENDATION 1-5: <=2 neg, >=4 pos
       ICLR 2019 rating 1-10, ICLR 2020 rating in {1,3,6,8}: <=4 neg, >=7 pos
       (so 5 and 6 are dropped for 2019, "6: Weak Accept" for 2020)
     meta-reviews are skipped; only the review body is used (no title)
  2. text: mojibake repaired (PeerRead CoNLL files hold double-encoded UTF-8),
     whitespace collapsed to single spaces, otherwise kept whole
  3. too short: dropped when under 100 characters once the ACL form headings
     ("- Strengths:", "- Weaknesses:", "- General Discussion:") are removed
  4. exact duplicates of the normalised text are dropped (first one kept)
  5. split by paper: dev if frac(sha256("<source>|<paper_id>")) < 0.4, else test
  6. balance within each (source, split): keep n = min(#neg, #pos) of each
     label (capped by --iclr-cap for the large ICLR sources), choosing the reviews
     with the smallest frac(sha256("<source>|<review_id>"))

frac(h) is the first 8 hex digits of the digest read as a number in [0, 1).

Usage:
    python scripts/collect_real_reviews.py /tmp/raw_reviews [--out data/real_reviews]
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import os
import re
import sys

DEV_FRACTION = 0.4
MIN_CHARS = 100
# Reviews per ICLR source across both splits (dev gets 40 %, test 60 %, half
# negative, half positive).  PeerRead sources are small and are not capped.
DEFAULT_ICLR_CAP = 360

ACL_HEADINGS = re.compile(r"-?\s*(strengths|weaknesses|general discussion)\s*:", re.I)


def frac(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 16**8


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as Latin-1 (e.g. 'â\\x80\\x93' -> '–')."""
    if not any("\u0080" <= ch <= "\u00ff" for ch in text):
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def normalise(text: str) -> str:
    return " ".join(fix_mojibake(text).split())


def long_enough(text: str) -> bool:
    return len(" ".join(ACL_HEADINGS.sub(" ", text).split())) >= MIN_CHARS


def read_peerread(raw: str, venue: str):
    source = f"PeerRead/{venue}"
    pattern = os.path.join(raw, "PeerRead", venue, "*", "reviews", "*.json")
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as fh:
            paper = json.load(fh)
        paper_id = str(paper.get("id") or os.path.basename(path)[: -len(".json")])
        for idx, rev in enumerate(paper.get("reviews", [])):
            if rev.get("is_meta_review"):
                continue
            score = int(rev["RECOMMENDATION"])
            label = "negative" if score <= 2 else "positive" if score >= 4 else None
            # A trimmed local copy may leave out the text of reviews that the
            # balancing step (rule 6) can never pick; they are only counted.
            yield dict(review=rev.get("comments") or "", label=label, score=score,
                       scale="1-5", source=source, paper_id=paper_id,
                       review_id=f"{paper_id}_{idx}",
                       omitted=bool(rev.get("omitted_in_local_copy")))


def read_iclr(raw: str, year: str):
    source = f"OpenReview/iclr_{year}"
    scale = "1-10" if year == "2019" else "1-8 (1,3,6,8)"
    pattern = os.path.join(raw, "iclr-analysis", "Data", year, "*", "*.json")
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as fh:
            note = json.load(fh)
        rating = note.get("rating")
        if not rating:
            continue
        score = int(str(rating).split(":", 1)[0])
        label = "negative" if score <= 4 else "positive" if score >= 7 else None
        paper_id = os.path.basename(os.path.dirname(path))
        review_id = os.path.basename(path)[: -len(".json")]
        yield dict(review=note.get("review") or "", label=label, score=score,
                   scale=scale, source=source, paper_id=paper_id, review_id=review_id)


def collect(raw: str, iclr_cap: int):
    readers = [read_peerread(raw, "acl_2017"), read_peerread(raw, "conll_2016"),
               read_iclr(raw, "2019"), read_iclr(raw, "2020")]
    stats = collections.Counter()
    seen: set[str] = set()
    cells = collections.defaultdict(list)  # (source, split, label) -> reviews
    for reader in readers:
        for rec in reader:
            stats[(rec["source"], "read")] += 1
            if rec["label"] is None:
                stats[(rec["source"], "borderline")] += 1
                continue
            if rec.pop("omitted", False):
                stats[(rec["source"], "text_not_in_copy")] += 1
                continue
            rec["review"] = normalise(rec["review"])
            if not long_enough(rec["review"]):
                stats[(rec["source"], "short")] += 1
                continue
            if rec["review"] in seen:
                stats[(rec["source"], "duplicate")] += 1
                continue
            seen.add(rec["review"])
            split = "dev" if frac(f"{rec['source']}|{rec['paper_id']}") < DEV_FRACTION else "test"
            cells[(rec["source"], split, rec["label"])].append(rec)

    out = {"dev": [], "test": []}
    sources = sorted({src for src, _, _ in cells})
    for source in sources:
        for split in ("dev", "test"):
            neg = cells.get((source, split, "negative"), [])
            pos = cells.get((source, split, "positive"), [])
            n = min(len(neg), len(pos))
            if source.startswith("OpenReview/"):
                share = DEV_FRACTION if split == "dev" else 1 - DEV_FRACTION
                n = min(n, int(iclr_cap * share / 2))
            for group in (neg, pos):
                group.sort(key=lambda r: frac(f"{r['source']}|{r['review_id']}"))
                out[split].extend(group[:n])
            stats[(source, f"{split}_kept_per_label")] = n
    for split in out:  # deterministic order that interleaves sources and labels
        out[split].sort(key=lambda r: hashlib.sha256(
            f"{r['source']}|{r['review_id']}".encode()).hexdigest())
    return out, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", help="folder of downloaded raw review files (layout above)")
    ap.add_argument("--out", default="data/real_reviews", help="output folder")
    ap.add_argument("--iclr-cap", type=int, default=DEFAULT_ICLR_CAP,
                    help="max reviews kept per ICLR source (both splits, both labels)")
    args = ap.parse_args(argv)

    out, stats = collect(args.raw, args.iclr_cap)
    os.makedirs(args.out, exist_ok=True)
    fields = ("review", "label", "score", "scale", "source", "paper_id", "review_id")
    for split, rows in out.items():
        with open(os.path.join(args.out, f"{split}.jsonl"), "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps({k: row[k] for k in fields}, ensure_ascii=False) + "\n")

    for (source, what), n in sorted(stats.items()):
        print(f"{source:24s} {what:22s} {n}", file=sys.stderr)
    for split, rows in out.items():
        by = collections.Counter((r["source"], r["label"]) for r in rows)
        print(split, len(rows), dict(sorted(by.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
