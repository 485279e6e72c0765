"""The content-addressed store behind "never generate the same thing twice".

A store is a folder of immutable parquet shards. Each shard is written to a temporary name, fsynced and renamed, and
its file name carries the sha256 of its bytes: a shard that was torn, truncated or edited no longer matches its name
and is moved to `quarantine/` instead of being read. Rows are keyed; when two shards hold the same key (two runs
raced), the oldest shard wins, so the result is the same whatever order files are listed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import polars as pl

from prefsynth.fsutil import atomic_write_bytes

log = logging.getLogger("prefsynth.cache")


def make_key(**parts: object) -> str:
    """A stable key for a dict of JSON-able parts (order-independent)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Store:
    def __init__(self, root: Path, kind: str, schema: dict[str, pl.DataType]):
        self.dir = Path(root) / kind
        self.schema = {"key": pl.Utf8, **schema}
        self.quarantined = 0

    def _shards(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("*.parquet") if not p.name.startswith("."))

    def _valid(self, path: Path) -> bool:
        expected = path.stem.rsplit("-", 1)[-1]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[: len(expected)]
        return len(expected) == 16 and digest == expected

    def _quarantine(self, path: Path, why: str) -> None:
        qdir = self.dir / "quarantine"
        qdir.mkdir(exist_ok=True)
        os.replace(path, qdir / path.name)
        self.quarantined += 1
        log.warning("cache shard %s discarded (%s); its rows will be generated again", path.name, why)

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
        if not frames:
            return pl.DataFrame(schema=self.schema)
        df = pl.concat(frames, how="vertical_relaxed").unique(subset="key", keep="first", maintain_order=True)
        if keys is not None:
            df = df.filter(pl.col("key").is_in(list(keys)))
        return df

    def append(self, rows: list[dict]) -> Path | None:
        """Write `rows` as one new shard (atomically). Returns its path."""
        if not rows:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        df = pl.DataFrame(rows, schema=self.schema)
        tmp = self.dir / f".incoming-{os.getpid()}-{time.time_ns()}.parquet"
        df.write_parquet(tmp, compression="zstd", statistics=False)
        data = tmp.read_bytes()
        tmp.unlink()
        name = f"{time.time_ns():020d}-{os.getpid()}-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        atomic_write_bytes(self.dir / name, data)
        return self.dir / name

    def sweep(self) -> None:
        """Remove temporary files left by writers that died mid-write (they were never valid shards).
        A live writer's files are left alone: the pid is part of every temporary name."""
        if not self.dir.is_dir():
            return
        for p in [*self.dir.glob(".incoming-*"), *self.dir.glob("*.tmp-*")]:
            pid = p.name.split(".tmp-")[-1] if ".tmp-" in p.name else p.name.split("-")[1]
            if not (pid.isdigit() and _alive(int(pid))):
                p.unlink(missing_ok=True)


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
