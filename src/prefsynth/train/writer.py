"""The writer: a LoRA adapter that teaches the bundled model to write like the reviews a reader accepted.

Rejection-sampling fine-tuning on our own outputs: every generated review that was read by hand and found a valid
review of the paper in the asked tone (tests/data) becomes one supervised example, with exactly the prompt the
pipeline sends (system message + instruction; the reply starts with the review). `setup -> fit -> save`; the
adapter (data/writer) is merged into the bundled model once, on first use (prefsynth.model).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from prefsynth.errors import UserError
from prefsynth.fsutil import atomic_dir
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.train.trainer import progress_callback
from prefsynth.train.writer_config import WriterConfig

RECORD = "writer.json"
# The adapter is stored in half precision: it ships in git (data/writer), and float16 halves it (19 -> 10 MB) while
# its deltas lose nothing a sampled review can tell (merging upcasts them to float32).
STORED_DTYPE = "float16"


def examples(paths: list[Path], templates: Templates, per_prompt: int | None = None) -> list[dict]:
    """Prompt/completion conversations of the accepted reviews, each (title, review) once, in file order, at most
    per_prompt of them for one (title, polarity)."""
    rows, seen, per = [], set(), Counter()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if not (r.get("valid") and r.get("label") == r.get("polarity")) or (r["title"], r["review"]) in seen:
                continue
            if per_prompt is not None and per[r["title"], r["polarity"]] >= per_prompt:
                continue
            seen.add((r["title"], r["review"]))
            per[r["title"], r["polarity"]] += 1
            rows.append({"prompt": [{"role": "system", "content": templates.system()},
                                    {"role": "user", "content": templates.generation(r["title"], r["polarity"])}],
                         "completion": [{"role": "assistant", "content": r["review"]}],
                         "title": r["title"]})
    return rows


def fit_writer(cfg: WriterConfig, say=print) -> dict:
    """Train the adapter and write it with its record into cfg.out (whole or not at all)."""
    if cfg.method == "dpo":
        from prefsynth.train.writer_dpo import fit_writer_dpo

        return fit_writer_dpo(cfg, say)
    cfg.validate()
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    templates = Templates(PromptConfig())
    data = examples(cfg.label_paths(), templates, cfg.per_prompt)
    if not data:
        raise UserError("no accepted reviews in the label files: nothing to train the writer on")
    base, tok, model = load_base(cfg)
    titles = sorted({d["title"] for d in data})
    say(f"writer: {len(data)} accepted reviews of {len(titles)} titles, base {base.name}")
    out = cfg.out_dir()
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as work:
        args = SFTConfig(**trainer_args(cfg, work, warmup_steps=5, logging_steps=5))
        lora = lora_config(cfg)
        train = Dataset.from_list([{k: d[k] for k in ("prompt", "completion")} for d in data])
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok, peft_config=lora,
                             callbacks=[progress_callback(say)])  # a line per logged step: ~30 s a step on 2 cores
        if len(trainer.train_dataset) == 0:  # TRL drops examples whose review is cut away entirely
            raise UserError(f"every prompt is longer than max_length {cfg.max_length} tokens: raise --max_length")
        t0 = time.time()
        trainer.train()
        seconds = time.time() - t0
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        store_halved(tmp / "adapter_model.safetensors")
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        record = {"base": base.name, "base_fingerprint": base.fingerprint, "examples": len(data),
                  "titles": titles, "labels": label_hashes(cfg.label_paths()),
                  "templates": templates.hash_for("system", "negative", "positive"),
                  "per_prompt": cfg.per_prompt, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
                  "lora": vars(cfg.lora),
                  "steps": trainer.state.global_step, "loss_first": losses[0] if losses else None,
                  "loss_last": losses[-1] if losses else None, "seconds": round(seconds, 1)}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        describe(tmp, record)
    say(f"writer adapter -> {out} ({record['steps']} steps, loss {record['loss_first']} -> {record['loss_last']}, "
        f"{seconds:.0f} s)")
    return record


def trainer_args(cfg: WriterConfig, work: str, **kw) -> dict:
    """The TRL config both writer trainers share (SFT and DPO), plus their own settings."""
    import torch

    return dict(output_dir=work, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
                learning_rate=cfg.lr, lr_scheduler_type="cosine", save_strategy="no", report_to=[],
                max_length=cfg.max_length, seed=cfg.seed,
                # TRL turns bf16 on by default: on a CPU without bf16 units that is several times slower than
                # float32; a GPU keeps it.
                bf16=torch.cuda.is_available(), gradient_checkpointing=False,
                use_cpu=not torch.cuda.is_available(), **kw)


def lora_config(cfg: WriterConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules(), task_type="CAUSAL_LM")


def load_base(cfg: WriterConfig):
    """(ModelRef, tokenizer, float32 model) of the model the adapter is trained on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefsynth.model import resolve_model

    base = resolve_model(cfg.base())
    return base, AutoTokenizer.from_pretrained(base.path), AutoModelForCausalLM.from_pretrained(
        base.path, dtype=torch.float32)


def describe(folder: Path, record: dict) -> None:
    """Our own README in place of PEFT's template, and the base named instead of this machine's path to it."""
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = record["base"]
    if isinstance(cfg.get("target_modules"), list):  # PEFT writes a set in hash order: sorted, a retrain is the same
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if record.get("method") == "dpo":
        what = (f"polished with DPO (beta {record['beta']}) on {record['examples']} pairs of one prompt each: a "
                f"generated review a reader accepted chosen, one they rejected rejected ({len(record['titles'])} "
                f"titles, tests/data), by `prefsynth train-writer --method dpo` (prefsynth/train/writer_dpo.py). "
                f"It is merged onto the writer it was trained on")
    else:
        what = (f"trained by `make writer` (prefsynth/train/writer.py) on {record['examples']} generated reviews of "
                f"{len(record['titles'])} titles that a reader labelled valid and of the asked tone (tests/data). "
                f"`--model writer` merges it into the bundled model")
    (folder / "README.md").write_text(
        f"# prefsynth writer adapter\n\nLoRA adapter (r {record['lora']['r']}, alpha {record['lora']['alpha']}) for "
        f"{record['base']}, {what}. Its training record: writer.json. "
        f"How it was measured: docs/quality.md#the-writer.\n")


def store_halved(weights: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, STORED_DTYPE)
    save_file({k: v.to(dtype) for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})


def label_hashes(paths: list[Path]) -> dict[str, str]:
    """What the adapter was trained from: each label file's name and the start of its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in paths}
