"""`prefsynth.json`: the machine-readable record written beside a dataset's card, read and written here only.

It holds the dataset version, the split of every title (so rebuilds never move a title), and per config the
sha256 of each parquet file, row counts, columns, build statistics and provenance. The card, the next build and
training all read it through `Manifest.read`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefsynth.constants import MANIFEST


@dataclass
class ConfigEntry:
    """One config (`paired` or `unpaired`) as last written."""

    files: dict[str, str]  # relative path -> sha256
    rows: dict[str, int]  # split -> rows
    columns: list[str]
    stats: dict[str, Any]  # the build stage's counts (rows, drops per filter, noise rates)
    provenance: dict[str, Any]  # model, templates, sampling, titles, reproducing command, packages
    built: str  # ISO time this config was last written
    dropped: dict[str, str] = field(default_factory=dict)  # dropped/<config>.parquet -> sha256 (none: not kept)
    dropped_rows: int = 0

    @property
    def license(self) -> str:
        return self.provenance.get("license", "apache-2.0")


@dataclass
class Manifest:
    version: int = 0
    created: str = ""
    updated: str = ""
    configs: dict[str, ConfigEntry] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)  # title -> split

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of `folder`; an empty one when there is none or it does not parse (a fresh start)."""
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        configs = {}
        raw = data.get("configs")
        for name, entry in (raw.items() if isinstance(raw, dict) else ()):
            try:
                configs[name] = ConfigEntry(**entry)
            except TypeError:  # an entry from another version: treat the config as not written
                continue
        try:
            version = int(data.get("version", 0))
        except (TypeError, ValueError):
            version = 0
        splits = data.get("splits")
        return cls(version, str(data.get("created", "")), str(data.get("updated", "")), configs,
                   {str(k): str(v) for k, v in splits.items()} if isinstance(splits, dict) else {})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def provenance(self, config: str) -> dict[str, Any]:
        entry = self.configs.get(config)
        return entry.provenance if entry else {}
