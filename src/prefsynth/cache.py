"""The content-addressed store behind "never generate the same thing twice".

A store is a folder of two kinds of files:

- a **journal** per writing process (`journal-<pid>-<ns>-<host>.jsonl`): every finished row is appended and flushed
  to the OS at once, so a killed process loses nothing it completed (the OS still holds the bytes); it is fsynced at
  most every `fsync_seconds` against power loss. Each line carries a checksum of its row: a torn last line fails it and
  is skipped, never read as data.
- immutable **shards** (`<ns>-<pid>-<sha16>.parquet`): a journal is compacted into one when its writer closes
  (or, for a writer that died, by the next run). A shard is written under a temporary name, fsynced and renamed,
  and its name carries the sha256 of its bytes: a shard that was torn, truncated or edited no longer matches its
  name and is moved to `quarantine/` instead of being read.

A store may sit on a folder several machines mount (`generate.store`, prefsynth.shared_store): every name carries
the writer's host as well as its pid, and a process only ever compacts or removes the files of dead writers of its
own host (a pid means nothing on another machine); another host's journals are read as they are.

Rows are keyed; when two files hold the same key (two runs raced, or a crash between compaction and journal
removal), the oldest wins, so the result does not depend on the order files are listed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import polars as pl

from prefsynth import faults
from prefsynth.fsutil import HOST, atomic_write_bytes

log = logging.getLogger("prefsynth.cache")


def make_key(**parts: object) -> str:
    """A stable key for a dict of JSON-able parts (order-independent)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _row_sum(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _ours_and_dead(pid: str, host: str | None) -> bool:
    """A file left by a writer of this host that is gone (names without a host predate shared stores: local)."""
    return (host is None or host == HOST) and pid.isdigit() and not _alive(int(pid))


def _left_by_dead_writer(stem: str) -> bool:
    """For `journal-<pid>-<ns>[-<host>]` and `.incoming-<pid>-<ns>[-<host>]` names."""
    _, pid, _, *host = stem.split("-", 3)
    return _ours_and_dead(pid, host[0] if host else None)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Journal:
    """Append-only, checksummed rows of one process; compacted into a shard on close."""

    def __init__(self, store: Store, fsync_seconds: float = 1.0):
        self.store = store
        store.dir.mkdir(parents=True, exist_ok=True)
        self.path = store.dir / f"journal-{os.getpid()}-{time.time_ns()}-{HOST}.jsonl"
        self._f = open(self.path, "a", encoding="utf-8")
        self.fsync_seconds = fsync_seconds
        self._last_sync = time.monotonic()
        self.rows = 0

    def add(self, row: dict) -> None:
        self._f.write(json.dumps({"c": _row_sum(row), "r": row}, ensure_ascii=False) + "\n")
        self._f.flush()  # in the OS now: survives the death of this process
        self.rows += 1
        if time.monotonic() - self._last_sync >= self.fsync_seconds:
            os.fsync(self._f.fileno())
            self._last_sync = time.monotonic()
        faults.point("journal.add")

    def close(self) -> None:
        if self._f.closed:
            return
        os.fsync(self._f.fileno())
        self._f.close()
        self.store.compact(self.path)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store:
    def __init__(self, root: Path, kind: str, schema: dict[str, pl.DataType]):
        self.dir = Path(root) / kind
        self.schema = {"key": pl.Utf8, **schema}
        self.quarantined = 0
        self.torn_lines = 0

    # -- reading ---------------------------------------------------------------------------------------------
    def _shards(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("*.parquet") if not p.name.startswith("."))

    def _journals(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("journal-*.jsonl"), key=lambda p: int(p.stem.split("-")[2]))

    def _valid(self, path: Path) -> bool:
        expected = path.stem.rsplit("-", 1)[-1]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[: len(expected)]
        return len(expected) == 16 and digest == expected

    def _quarantine(self, path: Path, why: str) -> None:
        qdir = self.dir / "quarantine"
        qdir.mkdir(exist_ok=True)
        os.replace(path, qdir / path.name)
        self.quarantined += 1
        log.warning("cache file %s discarded (%s); its rows will be made again", path.name, why)

    def _read_journal(self, path: Path) -> list[dict]:
        rows = []
        try:
            lines = path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return rows
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                row = rec["r"]
                ok = rec["c"] == _row_sum(row) and set(self.schema) <= set(row)
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                rows.append({k: row[k] for k in self.schema})
            else:
                self.torn_lines += 1  # a line cut by a crash, or edited by hand: never data
        return rows

    def load(self, keys: set[str] | None = None) -> pl.DataFrame:
        frames = []
        for path in self._shards():
            try:
                if not self._valid(path):
                    self._quarantine(path, "checksum mismatch")
                    continue
                df = pl.read_parquet(path)
            except FileNotFoundError:
                continue  # another process quarantined it first
            except Exception as e:  # noqa: BLE001 - any unreadable shard is treated the same way
                self._quarantine(path, type(e).__name__)
                continue
            if set(self.schema) - set(df.columns):
                self._quarantine(path, "schema mismatch")
                continue
            frames.append(df.select(list(self.schema)))
        for path in self._journals():
            rows = self._read_journal(path)
            if rows:
                frames.append(pl.DataFrame(rows, schema=self.schema))
        if not frames:
            return pl.DataFrame(schema=self.schema)
        df = pl.concat(frames, how="vertical_relaxed").unique(subset="key", keep="first", maintain_order=True)
        if keys is not None:
            df = df.filter(pl.col("key").is_in(list(keys)))
        return df

    # -- writing ---------------------------------------------------------------------------------------------
    def journal(self, fsync_seconds: float = 1.0) -> Journal:
        return Journal(self, fsync_seconds)

    def append(self, rows: list[dict]) -> Path | None:
        """Write `rows` as one new shard (atomically). Returns its path."""
        if not rows:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        df = pl.DataFrame(rows, schema=self.schema)
        tmp = self.dir / f".incoming-{os.getpid()}-{time.time_ns()}-{HOST}.parquet"
        df.write_parquet(tmp, compression="zstd", statistics=False)
        data = tmp.read_bytes()
        tmp.unlink()
        faults.point("shard.before_rename")
        name = f"{time.time_ns():020d}-{os.getpid()}-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        atomic_write_bytes(self.dir / name, data)
        return self.dir / name

    def compact(self, journal: Path) -> None:
        """Turn a closed journal into a shard, then remove it (a crash in between leaves duplicates, which load
        de-duplicates by key)."""
        rows = self._read_journal(journal)
        if rows:
            self.append(rows)
        faults.point("journal.before_remove")
        journal.unlink(missing_ok=True)

    def sweep(self) -> None:
        """Compact journals of writers that died, and remove temporary files they left (never valid shards).
        A live writer's files are left alone (its pid is part of every name), and so are other hosts' files."""
        if not self.dir.is_dir():
            return
        for p in self._journals():
            if _left_by_dead_writer(p.stem):
                self.compact(p)
        for p in self.dir.glob(".incoming-*"):
            if _left_by_dead_writer(p.stem):
                p.unlink(missing_ok=True)
        for p in self.dir.glob("*.tmp-*"):  # fsutil.atomic_write_bytes: <name>.tmp-<pid>-<host>
            pid, _, host = p.name.split(".tmp-")[-1].partition("-")
            if _ours_and_dead(pid, host or None):
                p.unlink(missing_ok=True)
