"""What `prefsynth train-writer` is told: `WriterConfig` (its flags) and its offline checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefsynth.config import opt
from prefsynth.constants import ROOT, WRITER_DIR
from prefsynth.errors import UserError
from prefsynth.train.config import LoraSettings

# Generated reviews read by hand; the writer learns from the ones a reader found valid and of the asked tone.
WRITER_LABELS = tuple(ROOT / "tests" / "data" / f"{name}_labels.jsonl"
                      for name in ("validity", "source_variant", "writer_eval", "neurips_eval"))


@dataclass
class WriterConfig:
    labels: str = opt(",".join(str(p.relative_to(ROOT)) for p in WRITER_LABELS),
                      "comma-separated jsonl files of hand-labelled generated reviews (title, polarity, review, "
                      "valid, label); rows with valid=true and label equal to polarity are the training examples")
    out: Path = opt(WRITER_DIR, "folder for the adapter and writer.json (the shipped one is data/writer)")
    base_model: str = opt("bundled", "model the adapter is trained on ('bundled', a folder or a Hub id)",
                          alias="model")
    per_prompt: int = opt(2, "at most this many accepted reviews per (title, polarity), the first in file order: a "
                          "prompt sampled many times (several models, candidates and seeds) does not dominate")
    epochs: float = opt(1.0, "passes over the examples")
    batch_size: int = opt(8, "examples per optimizer step")
    lr: float = opt(2e-4, "learning rate (cosine schedule, 5 warm-up steps)")
    max_length: int = opt(384, "tokens per prompt+review; the generation prompt is ~180 tokens")
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32))
    seed: int = opt(0, "seed of LoRA init and data order")

    def validate(self) -> None:
        if not self.epochs > 0:
            raise UserError(f"epochs must be positive, got {self.epochs}")
        if self.per_prompt < 1:
            raise UserError(f"per_prompt must be at least 1, got {self.per_prompt}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.max_length < 32:
            raise UserError(f"max_length must be at least 32, got {self.max_length}")
        for p in self.label_paths():
            if not p.exists():
                raise UserError(f"label file {p} does not exist")

    def label_paths(self) -> list[Path]:
        return [ROOT / p if not Path(p).is_absolute() else Path(p) for p in self.labels.split(",") if p.strip()]
