"""Stage 1, collect: paper titles from a file or an OpenReview venue, cleaned, de-duplicated and sampled.

A title is data, never code: nothing here (or later) evaluates it. Rows that cannot be used (bad bytes, NUL,
absurd length) are skipped and counted; only a source that yields nothing usable is an error.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from prefsynth.config import opt
from prefsynth.constants import DEFAULT_TITLES
from prefsynth.errors import UserError

OPENREVIEW_PREFIX = "openreview:"


@dataclass
class CollectConfig:
    source: str = opt(str(DEFAULT_TITLES), "titles: a .txt/.csv/.jsonl/.parquet file, or openreview:<venue id>",
                      alias="titles")
    column: str = opt("title", "column holding the title in csv/jsonl/parquet files")
    n: int | None = opt(300, "how many titles to sample (seeded); 'all' takes every title", alias="n")
    seed: int = opt(0, "sampling seed", alias="seed")
    max_chars: int = opt(300, "titles longer than this are skipped (and counted)")
    openreview_url: str = opt("https://api2.openreview.net", "OpenReview API (openreview: sources only)")


@dataclass
class Titles:
    titles: list[str]
    stats: dict[str, int] = field(default_factory=dict)


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                         "\u00ab": '"', "\u00bb": '"', "\u2013": "-", "\u2014": "-", "\u00a0": " "})
_WS = re.compile(r"\s+")


def normalise(title: str) -> str:
    """NFC, straight quotes, single spaces, no surrounding quotes or whitespace."""
    t = unicodedata.normalize("NFC", title).translate(_QUOTES)
    t = _WS.sub(" ", t).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1].strip()
    return t


def _read_lines(path: Path, stats: dict[str, int]) -> list[str]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for line in raw.splitlines():
        if b"\x00" in line:
            stats["skipped_nul"] = stats.get("skipped_nul", 0) + 1
            continue
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            stats["skipped_not_utf8"] = stats.get("skipped_not_utf8", 0) + 1
    return out


def _read_table(path: Path, column: str) -> list[str]:
    import polars as pl

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
        elif suffix in (".jsonl", ".ndjson"):
            df = pl.read_ndjson(path, infer_schema_length=None)
        else:
            df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - the parser's own message says what is wrong with the file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read titles file {path}: {msg[:200]}") from None
    if column not in df.columns:
        raise UserError(f"titles file {path} has no column {column!r} (columns: {', '.join(df.columns[:10])})")
    return [v for v in df.get_column(column).cast(pl.Utf8, strict=False).to_list() if v is not None]


def parse_openreview_notes(notes: list) -> list[str]:
    """Titles from OpenReview API-2 notes (`note.content["title"]["value"]`), LaTeX turned into unicode."""
    from pylatexenc.latex2text import LatexNodes2Text

    latex = LatexNodes2Text()
    titles = []
    for note in notes:
        content = note.content if hasattr(note, "content") else note.get("content", {})
        value = (content.get("title") or {}).get("value") if isinstance(content.get("title"), dict) \
            else content.get("title")
        if isinstance(value, str) and value.strip():
            titles.append(latex.latex_to_text(value) if ("\\" in value or "$" in value) else value)
    return titles


def _fetch_openreview(venue: str, url: str) -> list[str]:
    try:
        import openreview
    except ImportError:
        raise UserError("openreview sources need the openreview-py package (installed by `make install`)") from None
    try:
        client = openreview.api.OpenReviewClient(baseurl=url)
        notes = client.get_all_notes(content={"venueid": venue})
    except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP: one line either way
        raise UserError(f"cannot reach OpenReview at {url} for venue {venue!r} ({type(e).__name__})") from None
    return parse_openreview_notes(notes)


def read_source(cfg: CollectConfig, stats: dict[str, int]) -> list[str]:
    if cfg.source.startswith(OPENREVIEW_PREFIX):
        return _fetch_openreview(cfg.source[len(OPENREVIEW_PREFIX):], cfg.openreview_url)
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise UserError(f"titles file {path} does not exist")
    if not path.is_file():
        raise UserError(f"titles file {path} is not a file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".ndjson", ".parquet"):
        return _read_table(path, cfg.column)
    return _read_lines(path, stats)


def clean(raw: list[str], max_chars: int, stats: dict[str, int]) -> list[str]:
    """Normalise, drop empty and over-long rows, de-duplicate case-insensitively (first spelling wins)."""
    seen: set[str] = set()
    out = []
    for item in raw:
        t = normalise(item)
        if not t:
            stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
        elif len(t) > max_chars:
            stats["skipped_too_long"] = stats.get("skipped_too_long", 0) + 1
        elif "\x00" in t:
            stats["skipped_nul"] = stats.get("skipped_nul", 0) + 1
        elif (key := t.casefold()) in seen:
            stats["duplicates"] = stats.get("duplicates", 0) + 1
        else:
            seen.add(key)
            out.append(t)
    return out


def collect(cfg: CollectConfig) -> Titles:
    if cfg.n is not None and cfg.n <= 0:
        raise UserError(f"n must be a positive number of titles, got {cfg.n}")
    stats: dict[str, int] = {}
    raw = read_source(cfg, stats)
    stats["read"] = len(raw)
    titles = clean(raw, cfg.max_chars, stats)
    stats["unique"] = len(titles)
    if not titles:
        raise UserError(f"no usable titles in {cfg.source}")
    if cfg.n is not None and cfg.n > len(titles):
        raise UserError(f"n={cfg.n} but {cfg.source} has only {len(titles)} usable titles")
    # Sort before sampling so the sample depends on the set of titles and the seed, not on file order.
    pool = sorted(titles)
    sample = pool if cfg.n is None else random.Random(cfg.seed).sample(pool, cfg.n)
    stats["sampled"] = len(sample)
    return Titles(sample, stats)

