"""The dataset a run trains on: a local folder or a pinned Hub revision, read into train/validation frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from prefsynth import hub
from prefsynth.constants import CONFIG_FOR_MODE, MANIFEST, SPLITS
from prefsynth.errors import UserError
from prefsynth.manifest import Manifest
from prefsynth.train.config import TrainConfig, is_local

COLUMNS = {"paired": ["prompt", "chosen", "rejected"], "unpaired": ["prompt", "completion", "label"]}


@dataclass
class Data:
    folder: Path
    source: str  # what the user passed
    revision: str | None  # Hub commit sha, or None for a local folder
    config: str
    train: pl.DataFrame
    validation: pl.DataFrame
    manifest: Manifest

    @property
    def provenance(self) -> dict:
        """How the trained config was made (model, templates, sampling); {} when the dataset does not say."""
        return self.manifest.provenance(self.config) or {}

    @property
    def version(self) -> int | None:
        """The dataset version from prefsynth.json; None without one (Manifest.read gives version 0 then)."""
        return self.manifest.version or None


def download(cfg: TrainConfig, config: str) -> tuple[Path, str]:
    """The dataset's files at `cfg.revision` (one config, the manifest and the card), through the Hub cache."""
    rev = cfg.revision or "main"
    folder = hub.download_dataset(cfg.data, hub.resolve_endpoint(cfg.endpoint),
                                  [f"{config}/*.parquet", MANIFEST, "README.md"], rev)
    return folder, folder.name  # snapshot folders are named by commit sha


def load_data(cfg: TrainConfig) -> Data:
    config = CONFIG_FOR_MODE[cfg.mode]
    if is_local(cfg.data):
        folder, revision = Path(cfg.data).expanduser(), None
        if not folder.is_dir():
            raise UserError(f"dataset folder {folder} does not exist: build it first (make paired / make unpaired)")
    else:
        folder, revision = download(cfg, config)
    frames: dict[str, pl.DataFrame | None] = {}
    for split in SPLITS:
        path = folder / config / f"{split}.parquet"
        if not path.exists():
            if split == "validation":
                frames[split] = None
                continue
            raise UserError(f"{cfg.data} has no {config}/train.parquet: {cfg.mode.upper()} needs the {config} config "
                            f"(build it with --formats {config} or --formats both)")
        frames[split] = pl.read_parquet(path)
    train = frames["train"]
    missing = [c for c in COLUMNS[config] if c not in train.columns]
    if missing:
        raise UserError(f"{config}/train.parquet lacks column(s) {', '.join(missing)}")
    if train.height == 0:
        raise UserError(f"{config}/train.parquet of {cfg.data} has no rows")
    validation = frames["validation"] if frames["validation"] is not None else train.head(0)
    return Data(folder, cfg.data, revision, config, train, validation, Manifest.read(folder))


def kto_order(df: pl.DataFrame, seed: int, split: str = "training") -> pl.DataFrame:
    """Shuffle desirable and undesirable rows separately and interleave them: KTO samples sequentially, so this
    makes every batch of two or more rows mix labels (an all-desirable batch gives its KL term nothing to compare).
    Rows of the larger class that have no partner go last."""
    good = df.filter(pl.col("label")).sample(fraction=1.0, shuffle=True, seed=seed)
    bad = df.filter(~pl.col("label")).sample(fraction=1.0, shuffle=True, seed=seed + 1)
    if good.height == 0 or bad.height == 0:
        raise UserError(f"KTO needs desirable and undesirable rows; the {split} split has {good.height} desirable "
                        f"and {bad.height} undesirable")
    n = min(good.height, bad.height)
    pos = pl.int_range(pl.len(), dtype=pl.Int64)
    good = good.with_columns(pl.when(pos < n).then(pos * 2).otherwise(pos + n).alias("_o"))
    bad = bad.with_columns(pl.when(pos < n).then(pos * 2 + 1).otherwise(pos + n).alias("_o"))
    return pl.concat([good, bad]).sort("_o").drop("_o")


def to_dataset(df: pl.DataFrame, columns: list[str]):
    """A `datasets.Dataset` of `columns`, what TRL's trainers take."""
    import datasets

    return datasets.Dataset.from_polars(df.select(columns))
