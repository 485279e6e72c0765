"""Stage 6, write: the output folder, i.e. parquet files per config and split, `prefsynth.json` (the manifest) and
`README.md` (the dataset card the Hub shows), written in one atomic swap.

A build that would write the same bytes writes nothing: the folder, its card and its version stay as they are.
Otherwise the dataset version goes up by one and the card records everything needed to reproduce the build.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from prefsynth.build import Built, parquet_bytes
from prefsynth.card import render_card
from prefsynth.constants import DROPPED_DIR, MANIFEST, SPLITS
from prefsynth.fsutil import FileLock, atomic_dir, check_writable_dir
from prefsynth.manifest import ConfigEntry, Manifest


@dataclass
class WriteResult:
    out: Path
    changed: bool
    version: int
    files: dict[str, str]  # relative path -> sha256


def write_dataset(out: Path, built: Built, provenance: dict, splits: dict[str, str], lock_timeout: float = 0.0,
                  plots: dict[str, bytes] | None = None) -> WriteResult:
    out = check_writable_dir(out, "output")
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock", timeout=lock_timeout, what=f"output folder {out}"):
        old = Manifest.read(out)
        blobs: dict[str, bytes] = {}
        for config, frames in built.frames.items():
            for split in SPLITS:
                # An empty split is left out (file and card): `datasets` refuses a split with no rows.
                if frames[split].height:
                    blobs[f"{config}/{split}.parquet"] = parquet_bytes(frames[split])
        # Rows a filter dropped: beside the configs, never inside one (load_dataset and the trainers read configs).
        gone = {c: f"{DROPPED_DIR}/{c}.parquet" for c in built.frames if c in built.dropped}
        for c, rel in gone.items():
            blobs[rel] = parquet_bytes(built.dropped[c])
        files = {k: v for k, v in ((k, hashlib.sha256(v).hexdigest()) for k, v in blobs.items())}

        def files_of(config: str) -> dict[str, str]:
            return {k: v for k, v in files.items() if k.startswith(f"{config}/")}

        def dropped_of(config: str) -> dict[str, str]:
            return {gone[config]: files[gone[config]]} if config in gone else {}

        changed_configs = [c for c in built.frames
                           if c not in old.configs or old.configs[c].files != files_of(c)
                           or old.configs[c].dropped != dropped_of(c)]
        merged_splits = {**old.splits, **splits}
        if not changed_configs and merged_splits == old.splits and (out / "README.md").exists():
            return WriteResult(out, False, old.version, files)

        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        manifest = Manifest(version=old.version + 1, created=old.created or now, updated=now,
                            configs=dict(old.configs), splits=dict(sorted(merged_splits.items())))
        for c in changed_configs:
            manifest.configs[c] = ConfigEntry(files=files_of(c), rows={s: built.frames[c][s].height for s in SPLITS},
                                              columns=built.frames[c]["train"].columns, stats=built.stats,
                                              provenance=provenance, built=now, dropped=dropped_of(c),
                                              dropped_rows=built.dropped[c].height if c in gone else 0)
        with atomic_dir(out, keep=True) as tmp:
            for c in changed_configs:  # files of a split that is now empty must not linger
                for split in SPLITS:
                    (tmp / c / f"{split}.parquet").unlink(missing_ok=True)
                (tmp / DROPPED_DIR / f"{c}.parquet").unlink(missing_ok=True)
            for rel, data in blobs.items():
                if rel.split("/")[0] in changed_configs or rel in [gone[c] for c in changed_configs if c in gone]:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rel).write_bytes(data)
            for name, data in (plots or {}).items():
                (tmp / name).write_bytes(data)
            (tmp / MANIFEST).write_text(manifest.to_json())
            (tmp / "README.md").write_text(render_card(manifest, tmp, manifest.configs[changed_configs[0]].license))
        return WriteResult(out, True, manifest.version, files)
