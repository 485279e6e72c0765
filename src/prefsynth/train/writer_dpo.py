"""The writer, polished with DPO on what a reader rejected: `prefsynth train-writer --method dpo`.

SFT on accepted reviews (prefsynth.train.writer) teaches the writer what a good review looks like but never what a
bad one is. Here every generated review a reader rejected (incoherent, hearsay, wrong paper...) that shares its
(title, polarity) with one the reader accepted becomes a DPO pair: the same generation prompt, the accepted review
chosen, the rejected one rejected. The LoRA adapter is trained on top of the merged SFT writer (--model writer-sft),
whose own weights are the reference, and is merged onto it for `--model writer` (prefsynth.model.ensure_writer_model).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from prefsynth.errors import UserError
from prefsynth.fsutil import atomic_dir
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.train.writer_config import WriterConfig


def _read(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def preference_pairs(paths: list[Path], templates: Templates, per_prompt: int, rejected_from: str = "") -> list[dict]:
    """(prompt, chosen, rejected) conversations: for each (title, polarity), up to per_prompt rejected reviews whose
    model name contains rejected_from, each with an accepted review of the same prompt (one of the same model first,
    then another writer's, then any), in file order, each accepted review used once before any is reused."""
    good, bad = defaultdict(list), defaultdict(list)
    seen = set()
    for r in _read(paths):
        key, text = (r["title"], r["polarity"]), r["review"]
        if (key, text) in seen:
            continue
        seen.add((key, text))
        ok = r.get("valid") and r.get("label") == r.get("polarity")
        (good if ok else bad)[key].append(r)
    pairs = []
    for key, rejected in bad.items():
        if key not in good:
            continue
        picked = [r for r in rejected if rejected_from in str(r.get("model") or "")][:per_prompt]
        for i, rej in enumerate(picked):
            model = str(rej.get("model") or "")
            ranked = sorted(good[key], key=lambda g: (str(g.get("model") or "") != model,
                                                      "writer" not in str(g.get("model") or "")))
            cho = ranked[i % len(ranked)]
            prompt = [{"role": "system", "content": templates.system()},
                      {"role": "user", "content": templates.generation(key[0], key[1])}]
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": cho["review"]}],
                          "rejected": [{"role": "assistant", "content": rej["review"]}], "title": key[0],
                          "reasons": rej.get("reasons") or ["tone"]})
    return pairs


def fit_writer_dpo(cfg: WriterConfig, say=print) -> dict:
    """Train the DPO adapter on top of cfg.base() and write it with its record into cfg.out_dir() (whole or not at
    all)."""
    cfg.validate()
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from prefsynth.train.trainer import progress_callback
    from prefsynth.train.writer import (RECORD, describe, label_hashes, load_base, lora_config, store_halved,
                                        trainer_args)

    templates = Templates(PromptConfig())
    pairs = preference_pairs(cfg.label_paths(), templates, cfg.per_prompt, cfg.rejected_from)
    if not pairs:
        raise UserError("no (accepted, rejected) review pairs of one prompt in the label files: nothing to train on")
    base, tok, model = load_base(cfg)
    titles = sorted({p["title"] for p in pairs})
    say(f"writer dpo: {len(pairs)} pairs of {len(titles)} titles, base {base.name}")
    out = cfg.out_dir()
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as work:
        args = DPOConfig(**trainer_args(cfg, work, warmup_steps=3, logging_steps=2, beta=cfg.beta,
                                        disable_dropout=False))
        lora = lora_config(cfg)
        train = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        # ref_model None with a LoRA config: the reference is the base with the adapter switched off, i.e. the
        # writer as it was before this run.
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train, processing_class=tok,
                             peft_config=lora, callbacks=[progress_callback(say)])
        t0 = time.time()
        trainer.train()
        seconds = time.time() - t0
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        store_halved(tmp / "adapter_model.safetensors")
        hist = trainer.state.log_history
        losses = [h["loss"] for h in hist if "loss" in h]
        accs = [h["rewards/accuracies"] for h in hist if "rewards/accuracies" in h]
        record = {"method": "dpo", "base": base.name, "base_fingerprint": base.fingerprint, "examples": len(pairs),
                  "titles": titles, "labels": label_hashes(cfg.label_paths()),
                  "templates": templates.hash_for("system", "negative", "positive"), "per_prompt": cfg.per_prompt,
                  "rejected_from": cfg.rejected_from, "beta": cfg.beta, "epochs": cfg.epochs,
                  "batch_size": cfg.batch_size, "lr": cfg.lr, "lora": vars(cfg.lora),
                  "steps": trainer.state.global_step, "loss_first": losses[0] if losses else None,
                  "loss_last": losses[-1] if losses else None,
                  "reward_accuracy_last": accs[-1] if accs else None, "seconds": round(seconds, 1)}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        describe(tmp, record)
    say(f"writer dpo adapter -> {out} ({record['steps']} steps, loss {record['loss_first']} -> {record['loss_last']}, "
        f"{seconds:.0f} s)")
    return record
