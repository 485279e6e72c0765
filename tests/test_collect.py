"""collect: file formats, cleaning, de-duplication, seeded sampling, OpenReview parsing (no network)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import polars as pl
import pytest

from prefsynth.collect import CollectConfig, clean, collect, normalise, parse_openreview_notes
from prefsynth.errors import UserError


def test_normalise_quotes_and_whitespace():
    assert normalise("  \u201cAttention\u201d   is\tall  you\u00a0need ") == '"Attention" is all you need'
    assert normalise("\u2018Quoted with curly marks\u2019") == "Quoted with curly marks"
    assert normalise('"Quoted Title"') == "Quoted Title"
    assert normalise("A \u2014 B") == "A - B"


def test_clean_drops_empty_and_dedupes_case_insensitively():
    stats: dict[str, int] = {}
    out = clean(["Deep Nets", "deep  nets", "", "   ", "Other", "DEEP NETS"], 300, stats)
    assert out == ["Deep Nets", "Other"]
    assert stats == {"skipped_empty": 2, "duplicates": 2}


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_reads_every_format(tmp_path, fmt):
    titles = [f"Paper number {i}" for i in range(10)]
    path = tmp_path / f"titles.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(titles) + "\n")
    elif fmt == "csv":
        pl.DataFrame({"id": range(10), "paper_title": titles}).write_csv(path)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps({"paper_title": t, "x": 1}) for t in titles))
    else:
        pl.DataFrame({"paper_title": titles}).write_parquet(path)
    got = collect(CollectConfig(source=str(path), column="paper_title", n=10))
    assert sorted(got.titles) == sorted(titles)


def test_sample_is_seeded_and_independent_of_file_order(tmp_path):
    titles = [f"Title {i:03d}" for i in range(100)]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(titles))
    b.write_text("\n".join(reversed(titles)))
    s1 = collect(CollectConfig(source=str(a), n=20, seed=3)).titles
    s2 = collect(CollectConfig(source=str(b), n=20, seed=3)).titles
    s3 = collect(CollectConfig(source=str(a), n=20, seed=4)).titles
    assert s1 == s2 and len(set(s1)) == 20
    assert s1 != s3


def test_all_titles_and_default_file():
    got = collect(CollectConfig(n=None))
    assert len(got.titles) >= 300 and got.titles == sorted(got.titles)
    assert got.stats.get("duplicates", 0) == 0 and got.stats["unique"] == len(got.titles)


def test_bom_crlf_and_bad_rows_are_counted(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst title\r\nSecond title\r\nbad \xff\xfe bytes\r\nnul\x00here\r\n\r\n")
    got = collect(CollectConfig(source=str(path), n=2))
    assert sorted(got.titles) == ["First title", "Second title"]
    assert got.stats["skipped_not_utf8"] == 1 and got.stats["skipped_nul"] == 1


def test_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        collect(CollectConfig(source=str(tmp_path / "nope.txt"), n=1))
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="no column 'title'"):
        collect(CollectConfig(source=str(tmp_path / "t.csv"), n=1))
    (tmp_path / "few.txt").write_text("one\ntwo\n")
    with pytest.raises(UserError, match="only 2 usable titles"):
        collect(CollectConfig(source=str(tmp_path / "few.txt"), n=3))
    with pytest.raises(UserError, match="positive"):
        collect(CollectConfig(source=str(tmp_path / "few.txt"), n=0))


def test_openreview_notes_parse_without_network():
    notes = [
        SimpleNamespace(content={"title": {"value": "Scaling Laws for $\\alpha$-Transformers"}}),
        SimpleNamespace(content={"title": {"value": "  Plain   Title "}}),
        SimpleNamespace(content={"abstract": {"value": "no title"}}),
        {"content": {"title": {"value": "Dict Note"}}},
    ]
    titles = parse_openreview_notes(notes)
    assert titles[0] == "Scaling Laws for α-Transformers"
    assert titles[1:] == ["  Plain   Title ", "Dict Note"]  # cleaning happens later, in one place
