"""Facts the whole project shares, written once: where things live and what the output is made of."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: prompts/, data/ and flows/ live beside src/
PROMPTS_DIR = ROOT / "prompts"
DEFAULT_TITLES = ROOT / "data" / "titles.txt"
OUT_DIR = ROOT / "data" / "out"
DEFAULT_OUT = OUT_DIR / "reviewer2"  # what `make paired` writes and `make train-dpo` reads
WRITER_DIR = ROOT / "data" / "writer"  # the writer's SFT LoRA adapter on the bundled model (`make writer` rebuilds it)
WRITER_DPO_DIR = ROOT / "data" / "writer_dpo"  # its DPO polish, merged on top (`make writer-dpo` rebuilds it)

# The dataset's shape: two configs (Hub "subsets"), each with the same two splits.
CONFIG_NAMES = ("paired", "unpaired")
SPLITS = ("train", "validation")
DROPPED_DIR = "dropped"  # <out>/dropped/<config>.parquet: rows a filter removed, with reasons; no config reads it
MANIFEST = "prefsynth.json"  # the machine-readable record beside the card; read and written by prefsynth.manifest

# Which trainer reads which config.
MODE_FOR_CONFIG = {"paired": "dpo", "unpaired": "kto"}
CONFIG_FOR_MODE = {mode: config for config, mode in MODE_FOR_CONFIG.items()}

DEFAULT_HUB = "https://huggingface.co"
# Where a sentence ends: . ! ? and any closing quotes or brackets (filters trim cut-off reviews to it; generate's stop
# rule counts sentences by it).
SENTENCE_END = r"[.!?][\"')\]]*"
