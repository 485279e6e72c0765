"""What `prefsynth train-writer` is told: `WriterConfig` (its flags) and its offline checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prefsynth.config import opt
from prefsynth.constants import ROOT, WRITER_DIR, WRITER_DPO_DIR
from prefsynth.errors import UserError
from prefsynth.train.config import LoraSettings

# Generated reviews read by hand; the writer learns from the ones a reader found valid and of the asked tone.
WRITER_LABELS = tuple(ROOT / "tests" / "data" / f"{name}_labels.jsonl"
                      for name in ("validity", "source_variant", "writer_eval", "neurips_eval"))
# The DPO polish also learns from the tests of the writers before it (their rejected texts are its own failures):
# the SFT writer's, and the first polish's (dpo_test, opening_test). The texts read to test this polish
# (dpo2_test_labels.jsonl) are in no training file. File order picks the pairs: this is the order the shipped polish
# (data/writer_dpo) was trained with. A third polish, trained on these and the second's own tests (dpo2_test,
# temperature, cut_test, default_test, polish3_partner), was measured and not shipped (docs/quality.md).
DPO_LABELS = tuple(ROOT / "tests" / "data" / f"{name}_labels.jsonl" for name in (
    "neurips_eval", "neurips_test", "scorer_test", "source_variant", "validity", "writer_eval", "dpo_test",
    "opening_test"))


def _names(paths) -> str:
    return ", ".join(p.name for p in paths)


@dataclass
class WriterConfig:
    labels: str | None = opt(None, "comma-separated jsonl files of hand-labelled generated reviews (title, polarity, "
                             "review, valid, label); rows with valid=true and label equal to polarity are accepted, "
                             "the others rejected; None: " + _names(WRITER_LABELS) + " for sft, "
                             + _names(DPO_LABELS) + " for dpo")
    method: Literal["sft", "dpo"] = opt("sft", "sft learns the accepted reviews; dpo prefers each accepted review "
                                        "over a rejected one of the same prompt (prefsynth.train.writer_dpo)")
    out: Path | None = opt(None, "folder for the adapter and writer.json; None: the shipped one, data/writer for "
                                 "sft, data/writer_dpo for dpo")
    base_model: str | None = opt(None, "model the adapter is trained on ('bundled', 'writer-sft', a folder or a Hub "
                                       "id); None: bundled for sft, writer-sft (the sft writer) for dpo", alias="model")
    per_prompt: int = opt(2, "at most this many accepted (sft) or rejected (dpo) reviews per (title, polarity), the "
                          "first in file order: a prompt sampled many times (several models, candidates and seeds) "
                          "does not dominate")
    epochs: float = opt(1.0, "passes over the examples")
    batch_size: int = opt(8, "examples per optimizer step")
    lr: float = opt(2e-4, "learning rate (cosine schedule after a warm-up of 5 steps for sft, 3 for dpo)")
    max_length: int = opt(384, "tokens per prompt+review; the generation prompt is ~180 tokens")
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32))
    seed: int = opt(0, "seed of LoRA init and data order")
    beta: float = opt(0.1, "dpo only: how far from the reference the preference may pull")
    rejected_from: str = opt("writer", "dpo only: rejected reviews whose model name contains this ('' for all): the "
                             "writer's own failures are the ones it should unlearn")

    def validate(self) -> None:
        if self.method not in ("sft", "dpo"):
            raise UserError(f"method must be sft or dpo, got {self.method!r}")
        if not self.beta > 0:
            raise UserError(f"beta must be positive, got {self.beta}")
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

    def base(self) -> str:
        """The model the adapter is trained on: the bundled model for sft, the writer that dpo polishes."""
        return self.base_model or ("writer-sft" if self.method == "dpo" else "bundled")

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else (WRITER_DPO_DIR if self.method == "dpo" else WRITER_DIR)

    def label_paths(self) -> list[Path]:
        if self.labels is None:
            return list(DPO_LABELS if self.method == "dpo" else WRITER_LABELS)
        return [ROOT / p if not Path(p).is_absolute() else Path(p) for p in self.labels.split(",") if p.strip()]
