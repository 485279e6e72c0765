"""A store every worker reaches (`generate.store`), behind each machine's local generation cache.

With a store URL set, a generation or judgement is looked up in the local cache first, then in the store (found
there: copied into the local cache, not made again), and every new one is written to both as it finishes. That is
all shard runs on several machines need: each writes what it makes to the store, and the build that started them
reads the whole set back through its own cache. The merge is the cache's own (rows keyed, the oldest copy of a key
wins), so it is idempotent and a shard written twice changes nothing.

- `file:///shared/prefsynth` (or a plain path): a folder every machine mounts, in the cache's own format (journals
  appended and flushed row by row, compacted into checksummed immutable shards; see cache.py). A worker killed
  mid-shard has lost nothing it finished.
- any other fsspec URL (`s3://bucket/prefix`, `gs://...`, `hf://...`, `memory://` in tests): objects cannot be
  appended to, so a writer puts immutable, checksummed parquet segments (the cache's shard format), one per
  `fsync_seconds` with anything new and one on close. A worker killed mid-shard loses at most that last interval.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import polars as pl

from prefsynth.cache import Store
from prefsynth.errors import UserError
from prefsynth.fsutil import HOST

log = logging.getLogger("prefsynth.shared_store")


def local_path(url: str) -> Path | None:
    """The folder of a `file://` URL or plain path; None for any other scheme."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else url).expanduser()
    return None


def filesystem(url: str):
    """(fsspec file system, root path) of a store URL; a scheme whose package is missing is the user's to fix."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # e.g. s3:// without s3fs installed
        raise UserError(f"generate.store {url}: {e}") from None


def open_store(url: str, kind: str, schema: dict[str, pl.DataType]) -> Store | ObjectStore:
    if (path := local_path(url)) is not None:
        return Store(path, kind, schema)
    return ObjectStore(url, kind, schema)


class ObjectStore:
    """Immutable checksummed parquet segments under `<url>/<kind>/` on an fsspec file system."""

    def __init__(self, url: str, kind: str, schema: dict[str, pl.DataType]):
        self.fs, root = filesystem(url)
        self.dir = f"{root.rstrip('/')}/{kind}"
        self.schema = {"key": pl.Utf8, **schema}
        self.quarantined = 0  # segments whose bytes do not match their name: skipped (objects are not moved)
        self.torn_lines = 0

    def _segments(self) -> list[str]:
        self.fs.invalidate_cache(self.dir)  # other machines write here: never trust a cached listing
        try:
            names = self.fs.ls(self.dir, detail=False)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".parquet"))  # names start with a ns timestamp: oldest first

    def load(self, keys: set[str] | None = None) -> pl.DataFrame:
        frames = []
        for name in self._segments():
            data = self.fs.cat_file(name)
            expected = name.rsplit("/", 1)[-1].removesuffix(".parquet").rsplit("-", 1)[-1]
            if hashlib.sha256(data).hexdigest()[:16] != expected:
                self.quarantined += 1
                log.warning("store segment %s does not match its checksum: skipped", name)
                continue
            df = pl.read_parquet(io.BytesIO(data))
            if not set(self.schema) <= set(df.columns):
                self.quarantined += 1
                continue
            frames.append(df.select(list(self.schema)))
        if not frames:
            return pl.DataFrame(schema=self.schema)
        df = pl.concat(frames, how="vertical_relaxed").unique(subset="key", keep="first", maintain_order=True)
        return df if keys is None else df.filter(pl.col("key").is_in(list(keys)))

    def append(self, rows: list[dict]) -> str | None:
        if not rows:
            return None
        buf = io.BytesIO()
        pl.DataFrame(rows, schema=self.schema).write_parquet(buf, compression="zstd", statistics=False)
        data = buf.getvalue()
        name = f"{self.dir}/{time.time_ns():020d}-{os.getpid()}-{HOST}-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        self.fs.pipe_file(name, data)  # one PUT: an object store shows the whole object or none of it
        return name

    def sweep(self) -> None:
        """Nothing to compact: segments are complete objects."""

    def journal(self, fsync_seconds: float = 1.0) -> SegmentJournal:
        return SegmentJournal(self, fsync_seconds)


class SegmentJournal:
    """Rows buffered and put as one segment at most every `seconds` (and on close)."""

    def __init__(self, store: ObjectStore, seconds: float):
        self.store, self.seconds = store, seconds
        self._rows: list[dict] = []
        self._last = time.monotonic()

    def add(self, row: dict) -> None:
        self._rows.append(row)
        if time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        self.store.append(self._rows)
        self._rows, self._last = [], time.monotonic()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> SegmentJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Tiered:
    """The local cache in front of a shared store: the interface of `cache.Store` that generate and judge use."""

    def __init__(self, local: Store, shared: Store | ObjectStore | None):
        self.local, self.shared = local, shared
        self.pulled = 0  # rows copied from the store into the local cache

    @classmethod
    def open(cls, root: Path, kind: str, schema: dict[str, pl.DataType], url: str | None) -> Tiered:
        return cls(Store(root, kind, schema), open_store(url, kind, schema) if url else None)

    @property
    def quarantined(self) -> int:
        return self.local.quarantined + (self.shared.quarantined if self.shared else 0)

    def sweep(self) -> None:
        self.local.sweep()
        if self.shared is not None:
            self.shared.sweep()

    def load(self, keys: set[str]) -> pl.DataFrame:
        have = self.local.load(keys)
        if self.shared is None:
            return have
        missing = keys - set(have.get_column("key").to_list())
        if not missing:
            return have
        found = self.shared.load(missing)
        if found.height:
            self.local.append(found.to_dicts())  # next time a local read
            self.pulled += found.height
            have = self.local.load(keys)
        return have

    def journal(self, fsync_seconds: float = 1.0) -> TeeJournal:
        return TeeJournal([self.local.journal(fsync_seconds)]
                          + ([self.shared.journal(fsync_seconds)] if self.shared is not None else []))


class TeeJournal:
    """Every row to every journal: the store's copy is what a retried shard on another machine resumes from."""

    def __init__(self, journals: list):
        self.journals = journals

    def add(self, row: dict) -> None:
        for j in reversed(self.journals):  # the store first: a row in the local cache alone is lost with the machine
            j.add(row)

    def close(self) -> None:
        for j in self.journals:
            j.close()

    def __enter__(self) -> TeeJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
