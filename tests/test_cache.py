"""cache: immutable checksummed shards; torn or edited shards are quarantined, never read as data."""

from __future__ import annotations

import json

import polars as pl

from prefsynth.cache import Store, make_key

SCHEMA = {"text": pl.Utf8, "n": pl.Int32}


def test_key_is_order_independent_and_sensitive():
    assert make_key(a=1, b="x") == make_key(b="x", a=1)
    assert make_key(a=1, b="x") != make_key(a=1, b="y")


def test_append_and_load(tmp_path):
    s = Store(tmp_path, "gen", SCHEMA)
    s.append([{"key": "k1", "text": "a", "n": 1}, {"key": "k2", "text": "b", "n": 2}])
    s.append([{"key": "k3", "text": "c", "n": 3}])
    df = s.load()
    assert sorted(df.get_column("key").to_list()) == ["k1", "k2", "k3"]
    assert s.load({"k2"}).get_column("text").to_list() == ["b"]


def test_duplicate_keys_oldest_shard_wins(tmp_path):
    s = Store(tmp_path, "gen", SCHEMA)
    s.append([{"key": "k1", "text": "first", "n": 1}])
    s.append([{"key": "k1", "text": "second", "n": 1}])
    assert s.load().get_column("text").to_list() == ["first"]


def test_truncated_shard_is_quarantined(tmp_path):
    s = Store(tmp_path, "gen", SCHEMA)
    good = s.append([{"key": "k1", "text": "a", "n": 1}])
    bad = s.append([{"key": "k2", "text": "b", "n": 2}])
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # a torn write
    df = s.load()
    assert df.get_column("key").to_list() == ["k1"]
    assert s.quarantined == 1 and not bad.exists() and (s.dir / "quarantine" / bad.name).exists()
    assert good.exists()


def test_edited_shard_with_valid_parquet_is_quarantined(tmp_path):
    s = Store(tmp_path, "gen", SCHEMA)
    p = s.append([{"key": "k1", "text": "a", "n": 1}])
    pl.DataFrame({"key": ["k1"], "text": ["tampered"], "n": [1]},
                 schema={"key": pl.Utf8, **SCHEMA}).write_parquet(p)
    assert s.load().height == 0 and s.quarantined == 1


def test_leftover_temp_files_are_ignored_and_swept(tmp_path):
    s = Store(tmp_path, "gen", SCHEMA)
    s.append([{"key": "k1", "text": "a", "n": 1}])
    (s.dir / ".incoming-999999-1.parquet").write_bytes(b"PAR1 partial")
    assert s.load().height == 1
    s.sweep()
    assert not list(s.dir.glob(".incoming-*"))


def test_journal_survives_without_close_and_skips_torn_lines(tmp_path):
    s = Store(tmp_path, "gen", SCHEMA)
    j = s.journal()
    j.add({"key": "k1", "text": "a", "n": 1})
    j.add({"key": "k2", "text": "b", "n": 2})
    j._f.write('{"c": "0000", "r": {"key": "k3", "te')  # a write cut short by a crash
    j._f.flush()
    # not closed: what a killed process leaves behind is still readable, minus the torn line
    assert sorted(s.load()["key"].to_list()) == ["k1", "k2"] and s.torn_lines == 1


def test_journal_with_bad_checksum_is_not_data(tmp_path):
    s = Store(tmp_path, "gen", SCHEMA)
    with s.journal() as j:
        j.add({"key": "k1", "text": "a", "n": 1})
    path = s.dir / "journal-1-1.jsonl"
    path.write_text('{"c": "deadbeefdeadbeef", "r": {"key": "k9", "text": "forged", "n": 9}}\n')
    assert s.load()["key"].to_list() == ["k1"]


def test_sweep_compacts_journals_of_dead_writers(tmp_path):
    s = Store(tmp_path, "gen", SCHEMA)
    s.dir.mkdir(parents=True)
    dead = s.dir / "journal-999999-5.jsonl"  # pid 999999: no such process
    from prefsynth.cache import _row_sum
    row = {"key": "k1", "text": "a", "n": 1}
    dead.write_text(json.dumps({"c": _row_sum(row), "r": row}) + "\n")
    s.sweep()
    assert not dead.exists() and len(list(s.dir.glob("*.parquet"))) == 1
    assert s.load()["key"].to_list() == ["k1"]
