"""Stage 7, train: a LoRA adapter on a built dataset with TRL (DPO on `paired`, KTO on `unpaired`), then an
evaluation that says whether the data did what it was built for.

Training curves alone cannot say that: a DPO run whose chosen and rejected rewards both sink can still have learnt
the preference, and a run with a textbook loss curve can have learnt nothing a reader would notice. So after
training, the base model and base + adapter each write a review for every validation title from the neutral
dataset prompt (same sampling seed per title), the project's polarity judge scores both (LLM judge on the base
model, adapter off, plus VADER, combined as the judge stage does), and the output reports each model's negativity
rate and how often the tuned review beats the base one.

Truncation (measured, see README "Training"): the neutral dataset prompt is ~180-195 tokens with SmolLM2's chat
template, longer than the Reviewer #2 max_length of 128. TRL 1.16's only supported mode (keep_start) drops every
example whose prompt alone fills max_length, and then fails with "num_samples=0". The default here (`truncation:
prompt`) cuts the prompt from the left instead, in our collator, so the completion (the thing being learnt) stays
whole and the prompt keeps its end (title, instruction, chat turn marker).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from prefsynth.config import opt, to_dict
from prefsynth.errors import UserError
from prefsynth.fsutil import FileLock, atomic_dir, atomic_write_json, check_writable_dir

log = logging.getLogger("prefsynth.train")

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT / "data" / "out" / "reviewer2"
CONFIG_FOR_MODE = {"dpo": "paired", "kto": "unpaired"}
# The Reviewer #2 schedule: DPO counts steps, KTO counts epochs.
DEFAULT_STEPS = {"dpo": 2000}
DEFAULT_EPOCHS = {"kto": 8.0}
DEFAULT_BATCH = {"dpo": 10, "kto": 16}
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

Step = Callable[[Callable[..., Any], str], Callable[..., Any]]


def plain_step(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    return fn


@dataclass
class LoraSettings:
    r: int = opt(8, "LoRA rank")
    alpha: int = opt(16, "LoRA alpha (scale = alpha / r)")
    dropout: float = opt(0.05, "LoRA dropout (TRL's disable_dropout is turned off so this value is really used)")
    targets: str = opt("all-linear", "modules to adapt: 'all-linear' or a comma list such as q_proj,v_proj")


@dataclass
class EvalSettings:
    titles: int = opt(100, "validation titles to write reviews for after training (0 skips the evaluation)")
    max_tokens: int = opt(96, "new tokens per evaluation review")
    temperature: float = opt(0.7, "sampling temperature of the evaluation reviews")
    top_p: float = opt(0.95, "nucleus sampling of the evaluation reviews")
    batch_size: int = opt(32, "prompts per generation batch")


@dataclass
class TrainConfig:
    data: str = opt(str(DEFAULT_DATA), "dataset: a folder written by `prefsynth build`, or a Hub dataset repo "
                                       "namespace/name")
    revision: str | None = opt(None, "Hub revision of --data (commit sha, tag such as v3, or branch); Hub only")
    mode: Literal["dpo", "kto"] = opt("dpo", "dpo trains on the paired config, kto on the unpaired one")
    out: Path | None = opt(None, "output folder for adapter, config, metrics, plot and report; "
                                 "None: data/out/train-<mode>")
    base_model: str | None = opt(None, "model to fine-tune ('bundled', a folder or a Hub id); None: the model "
                                       "that generated the data (from the dataset's prefsynth.json)", alias="model")
    steps: int | None = opt(None, "optimizer steps; None: the default schedule (DPO 2,000 steps, KTO 8 epochs)")
    dpo_steps: int = opt(2000, "DPO: steps of the default schedule")
    kto_epochs: float = opt(8.0, "KTO: epochs of the default schedule")
    batch_size: int | None = opt(None, "per-device batch size; None: 10 for DPO, 16 for KTO (KTO needs > 1)")
    grad_accum: int = opt(1, "gradient accumulation steps")
    beta: float = opt(0.1, "DPO/KTO beta: how far the policy may move from the reference")
    lr: float = opt(5e-4, "learning rate (TRL's own default is 1e-6)")
    scheduler: str = opt("cosine", "learning-rate schedule (a transformers scheduler name)")
    warmup_steps: int = opt(0, "linear warm-up steps")
    max_length: int | None = opt(128, "tokens per prompt+completion sequence; None: no truncation")
    truncation: Literal["prompt", "trl"] = opt(
        "prompt", "prompt: cut the prompt from the left so the completion survives; trl: TRL's keep_start, which "
                  "drops every example whose prompt alone reaches max_length")
    lora: LoraSettings = field(default_factory=LoraSettings)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: cuda when available, else cpu")
    gradient_checkpointing: bool = opt(True, "recompute activations in the backward pass (SmolLM2, CPU, batch 10: "
                                             "same s/step, peak memory 6.8 instead of 11.8 GB)")
    seed: int = opt(0, "seed of LoRA init, data order and evaluation sampling")
    logging_steps: int | None = opt(None, "log every N steps; None: about 100 points over the run")
    eval_steps: int | None = opt(None, "validation loss every N steps; None: about 10 times per run; 0: never")
    eval: EvalSettings = field(default_factory=EvalSettings)
    push_to: str | None = opt(None, "Hub model repo namespace/name to upload the output folder to (optional)")
    private: bool = opt(True, "create the model repo private (ignored when it exists)")
    endpoint: str | None = opt(None, "Hub URL for --data and --push_to; unset: $HF_ENDPOINT, else huggingface.co")

    def resolved_out(self) -> Path:
        return Path(self.out).expanduser() if self.out else ROOT / "data" / "out" / f"train-{self.mode}"

    def validate(self) -> None:
        """Offline checks, before any model is loaded."""
        if self.steps is not None and self.steps < 1:
            raise UserError(f"steps must be at least 1, got {self.steps}")
        if self.steps is None and self.mode == "dpo" and self.dpo_steps < 1:
            raise UserError(f"dpo_steps must be at least 1, got {self.dpo_steps}")
        if self.steps is None and self.mode == "kto" and self.kto_epochs <= 0:
            raise UserError(f"kto_epochs must be positive, got {self.kto_epochs}")
        bs = self.effective_batch_size()
        if bs < 1:
            raise UserError(f"batch_size must be at least 1, got {bs}")
        if self.mode == "kto" and bs < 2:
            # TRL raises deep inside the trainer; the reason matters more than the traceback.
            raise UserError(f"KTO needs a per-device batch size of at least 2 (got {bs}): its KL estimate pairs each "
                            f"prompt with another row's completion in the same batch")
        if self.grad_accum < 1:
            raise UserError(f"grad_accum must be at least 1, got {self.grad_accum}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.max_length is not None and self.max_length < 16:
            raise UserError(f"max_length must be at least 16 tokens (or none), got {self.max_length}")
        if self.lora.r < 1 or self.lora.alpha < 1 or not 0 <= self.lora.dropout < 1:
            raise UserError("lora.r and lora.alpha must be >= 1 and lora.dropout in [0, 1)")
        if self.eval.titles < 0 or self.eval.max_tokens < 1 or self.eval.batch_size < 1:
            raise UserError("eval.titles must be >= 0, eval.max_tokens and eval.batch_size >= 1")
        if self.revision and _is_local(self.data):
            raise UserError(f"--revision applies to Hub datasets, but {self.data} is a local folder")
        if self.push_to:
            from prefsynth.publish import _check_repo_id

            _check_repo_id(self.push_to, False)

    def effective_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else DEFAULT_BATCH[self.mode]


@dataclass
class TrainResult:
    out: str
    mode: str
    base_model: str
    steps: int
    seconds: float
    seconds_per_step: float
    train: dict = field(default_factory=dict)  # last logged training metrics
    eval: dict = field(default_factory=dict)  # last validation metrics (eval_loss, eval_rewards/...)
    evaluation: dict = field(default_factory=dict)  # negativity rates and win rate (empty when skipped)
    pushed: dict | None = None

    def lines(self) -> list[str]:
        out = [f"{self.mode.upper()} adapter on {self.base_model} at {self.out}",
               f"  {self.steps} steps in {self.seconds:.0f}s ({self.seconds_per_step:.2f}s/step)"]
        keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl")
        if self.train:
            out.append("  train: " + ", ".join(f"{k} {self.train[k]:.4g}" for k in keys if k in self.train))
        if self.eval:
            out.append("  validation: " + ", ".join(f"{k} {self.eval['eval_' + k]:.4g}" for k in keys
                                                    if "eval_" + k in self.eval))
        e = self.evaluation
        if e:
            out.append(f"  evaluation on {e['titles']} validation titles: negativity base "
                       f"{e['negativity_rate_base']:.0%} -> tuned {e['negativity_rate_tuned']:.0%}; tuned review "
                       f"more {e['target']} than base for {e['win_rate']:.0%} of titles")
        if self.pushed:
            out.append(f"  pushed to {self.pushed['repo_id']}@{self.pushed['revision'][:12]}")
        return out


# ------------------------------------------------------------------------------------------------------------ data


def _is_local(data: str) -> bool:
    return Path(data).expanduser().exists() or data.startswith((".", "/", "~")) or not _REPO_ID.fullmatch(data)


@dataclass
class Data:
    folder: Path
    source: str  # what the user passed
    revision: str | None  # Hub commit sha, or None for a local folder
    config: str
    train: pl.DataFrame
    validation: pl.DataFrame
    manifest: dict

    @property
    def provenance(self) -> dict:
        return (self.manifest.get("configs", {}).get(self.config, {}) or {}).get("provenance", {}) or {}


def _download(cfg: TrainConfig, config: str) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    from prefsynth.publish import _resolve_endpoint, PublishConfig

    endpoint = _resolve_endpoint(PublishConfig(endpoint=cfg.endpoint))
    rev = cfg.revision or "main"
    try:
        folder = Path(snapshot_download(cfg.data, repo_type="dataset", revision=rev, endpoint=endpoint,
                                        allow_patterns=[f"{config}/*.parquet", "prefsynth.json", "README.md"]))
    except RevisionNotFoundError:
        raise UserError(f"dataset {cfg.data} on {endpoint} has no revision {rev!r}") from None
    except RepositoryNotFoundError:
        raise UserError(f"dataset repo {cfg.data} not found on {endpoint} (or the token may not read it), and "
                        f"there is no local folder of that name") from None
    except LocalEntryNotFoundError:
        raise UserError(f"dataset {cfg.data}@{rev} is not in the local Hugging Face cache and the Hub cannot be "
                        f"reached (offline?)") from None
    except HfHubHTTPError as e:
        raise UserError(f"downloading dataset {cfg.data}@{rev} failed: {' '.join(str(e).split())[:200]}") from None
    return folder, folder.name  # snapshot folders are named by commit sha


def load_data(cfg: TrainConfig) -> Data:
    config = CONFIG_FOR_MODE[cfg.mode]
    if _is_local(cfg.data):
        folder, revision = Path(cfg.data).expanduser(), None
        if not folder.is_dir():
            raise UserError(f"dataset folder {folder} does not exist: build it first (make paired / make unpaired)")
    else:
        folder, revision = _download(cfg, config)
    frames = {}
    for split in ("train", "validation"):
        path = folder / config / f"{split}.parquet"
        if not path.exists():
            if split == "validation":
                frames[split] = None
                continue
            flag = "--formats unpaired" if config == "unpaired" else "--formats paired"
            raise UserError(f"{cfg.data} has no {config}/train.parquet: {cfg.mode.upper()} needs the {config} config "
                            f"(build it with {flag} or --formats both)")
        frames[split] = pl.read_parquet(path)
    need = ["prompt", "chosen", "rejected"] if config == "paired" else ["prompt", "completion", "label"]
    missing = [c for c in need if c not in frames["train"].columns]
    if missing:
        raise UserError(f"{config}/train.parquet lacks column(s) {', '.join(missing)}")
    if frames["train"].height == 0:
        raise UserError(f"{config}/train.parquet of {cfg.data} has no rows")
    if frames["validation"] is None:
        frames["validation"] = frames["train"].head(0)
    manifest = {}
    if (folder / "prefsynth.json").exists():
        try:
            manifest = json.loads((folder / "prefsynth.json").read_text())
        except ValueError:
            manifest = {}
    return Data(folder, cfg.data, revision, config, frames["train"], frames["validation"], manifest)


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


def _to_dataset(df: pl.DataFrame, columns: list[str]):
    import datasets

    return datasets.Dataset.from_polars(df.select(columns))


# ----------------------------------------------------------------------------------------------------------- model


def resolve_base(cfg: TrainConfig, data: Data):
    """The model to fine-tune: the one given, else the one that generated the data (from the manifest)."""
    from prefsynth.model import resolve_model

    if cfg.base_model:
        return resolve_model(cfg.base_model)
    prov = data.provenance
    generated_by = ((prov.get("config") or {}).get("generate") or {}).get("model")
    if not generated_by:
        raise UserError(f"{data.source} has no prefsynth.json naming the model that generated it: pass --model")
    try:
        ref = resolve_model(generated_by)
    except UserError as e:
        raise UserError(f"the data was generated by {generated_by!r}, which cannot be loaded here ({e}): "
                        f"pass --model") from None
    if prov.get("model_fingerprint") and prov["model_fingerprint"] != ref.fingerprint:
        log.warning("base model %s differs from the one that generated the data (fingerprint %s, data says %s)",
                    ref.name, ref.fingerprint[:12], prov["model_fingerprint"][:12])
    return ref


@dataclass
class Device:
    kind: str  # cpu | cuda
    dtype: str  # float32 | bfloat16
    bf16: bool
    fp16: bool
    optim: str
    gradient_checkpointing: bool


def resolve_device(cfg: TrainConfig) -> Device:
    import importlib.util

    import torch

    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        raise UserError("device 'cuda' requested but no CUDA GPU is visible to torch (use --device cpu or auto)")
    kind = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and has_cuda) else "cpu"
    if kind == "cpu":
        # TRL configs default to bf16=True, which raises on a CPU; bf16 matmuls are also ~4x slower than fp32 on
        # CPUs without AMX. Plain AdamW: the paged optimizers need bitsandbytes and CUDA.
        return Device("cpu", "float32", False, False, "adamw_torch", cfg.gradient_checkpointing)
    bf16 = torch.cuda.is_bf16_supported()
    # Paged AdamW moves optimizer state to CPU under memory pressure instead of failing; it needs bitsandbytes.
    optim = "paged_adamw_32bit" if importlib.util.find_spec("bitsandbytes") else "adamw_torch_fused"
    # Pre-Ampere GPUs: fp32 weights with fp16 autocast (bf16 weights would be emulated or refused).
    return Device("cuda", "bfloat16" if bf16 else "float32", bf16, not bf16, optim, cfg.gradient_checkpointing)


# ------------------------------------------------------------------------------------------------------ truncation


def fit_prompt(prompt: list[int], completions: list[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Cut `prompt` from the left so prompt + the longest completion fit in max_length. Completions stay whole
    unless one alone leaves less than a quarter of the window to the prompt; then they are cut at the right.
    All completions keep the same prompt (a DPO pair must be compared on the same context)."""
    longest = max((len(c) for c in completions), default=0)
    if len(prompt) + longest <= max_length:
        return prompt, completions
    keep = max(max_length - longest, min(len(prompt), max_length // 4))
    room = max_length - keep
    return prompt[len(prompt) - keep:], [c[:room] for c in completions]


def _collators():
    """Collator subclasses that truncate the prompt side first, then let TRL pad (imported lazily: TRL is heavy)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    @dataclass
    class PromptFirstPreference(DataCollatorForPreference):
        budget: int | None = None

        def torch_call(self, examples):
            if self.budget is not None:
                examples = [_fit_example(e, ("chosen_ids", "rejected_ids"), self.budget) for e in examples]
            return super().torch_call(examples)

    @dataclass
    class PromptFirstUnpaired(DataCollatorForUnpairedPreference):
        budget: int | None = None

        def torch_call(self, examples):
            if self.budget is not None:
                keys = tuple(k for k in ("completion_ids", "KL_completion_ids") if k in examples[0])
                examples = [_fit_example(e, keys, self.budget) for e in examples]
            return super().torch_call(examples)

    return PromptFirstPreference, PromptFirstUnpaired


def _fit_example(example: dict, keys: tuple[str, ...], budget: int) -> dict:
    prompt, comps = fit_prompt(example["prompt_ids"], [example[k] for k in keys], budget)
    return {**example, "prompt_ids": prompt, **dict(zip(keys, comps))}


def truncation_stats(ds, completion_keys: tuple[str, ...], max_length: int | None) -> dict:
    """What truncation does to this data, measured on the tokenized training set."""
    prompts = [len(p) for p in ds["prompt_ids"]]
    longest = [max(len(c) for c in cs) for cs in zip(*(ds[k] for k in completion_keys))]
    out = {"rows": len(prompts), "prompt_tokens_min": min(prompts, default=0),
           "prompt_tokens_max": max(prompts, default=0),
           "completion_tokens_max": max(longest, default=0),
           "completion_tokens_mean": round(statistics.fmean(longest), 1) if longest else 0.0}
    if max_length is not None and prompts:
        cut = [fit_prompt(list(range(p)), [list(range(c))], max_length) for p, c in zip(prompts, longest)]
        out["prompt_cut_share"] = round(sum(len(p2) < p for (p2, _), p in zip(cut, prompts)) / len(prompts), 4)
        out["completion_cut_share"] = round(sum(len(c2[0]) < c for (_, c2), c in zip(cut, longest)) / len(prompts), 4)
        out["prompt_tokens_kept_mean"] = round(statistics.fmean(len(p2) for p2, _ in cut), 1)
    return out


# ---------------------------------------------------------------------------------------------------------- train


def _schedule(cfg: TrainConfig, n_train: int) -> tuple[int, float | None]:
    """(total optimizer steps, epochs or None) of this run."""
    per_step = cfg.effective_batch_size() * cfg.grad_accum
    steps_per_epoch = max(1, math.ceil(n_train / per_step))
    if cfg.steps is not None:
        return cfg.steps, None
    if cfg.mode == "dpo":
        return cfg.dpo_steps, None
    return max(1, math.ceil(steps_per_epoch * cfg.kto_epochs)), cfg.kto_epochs


def _callback(log_line: Callable[[str], None]):
    from transformers import TrainerCallback

    keys = ("loss", "eval_loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl",
            "eval_rewards/accuracies", "eval_rewards/margins", "eval_kl", "learning_rate")

    class Progress(TrainerCallback):
        """Step timings, and each log event as one line (the Prefect run log shows them)."""

        def __init__(self):
            self.step_seconds: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.step_seconds.append(time.perf_counter() - self._t)

        def on_log(self, args, state, control, logs=None, **kw):
            shown = {k: v for k, v in (logs or {}).items() if k in keys and isinstance(v, int | float)}
            if shown:
                log_line(f"step {state.global_step}/{state.max_steps}: "
                         + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))

    return Progress()


def _trainer(cfg: TrainConfig, data: Data, model, tokenizer, device: Device, work: Path, callbacks: list):
    from peft import LoraConfig

    bs = cfg.effective_batch_size()
    n_train = data.train.height
    total, epochs = _schedule(cfg, n_train)
    has_eval = data.validation.height > 0 and cfg.eval_steps != 0
    eval_every = cfg.eval_steps or max(1, total // 10)
    ours = cfg.truncation == "prompt"
    common = dict(
        output_dir=str(work), per_device_train_batch_size=bs, per_device_eval_batch_size=bs,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_steps, beta=cfg.beta,
        # Our collator truncates; TRL's own filter would drop every example whose prompt reaches max_length.
        max_length=None if ours else cfg.max_length,
        max_steps=total if epochs is None else -1, num_train_epochs=epochs or 1.0,
        logging_steps=cfg.logging_steps or max(1, total // 100), logging_first_step=True,
        eval_strategy="steps" if has_eval else "no", eval_steps=eval_every if has_eval else None,
        save_strategy="no", report_to=[], seed=cfg.seed, data_seed=cfg.seed,
        bf16=device.bf16, fp16=device.fp16, use_cpu=device.kind == "cpu", optim=device.optim,
        gradient_checkpointing=device.gradient_checkpointing, disable_tqdm=False,
        # TRL's disable_dropout zeroes every nn.Dropout after adding LoRA, LoRA's own included, so lora.dropout
        # would silently be 0. The base model's own dropout is switched off below, before LoRA is added.
        disable_dropout=False,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=cfg.lora.targets if cfg.lora.targets == "all-linear"
        else [t.strip() for t in cfg.lora.targets.split(",") if t.strip()],
    )
    from trl.trainer.utils import disable_dropout_in_model

    disable_dropout_in_model(model)  # the base model only: LoRA layers do not exist yet
    PromptFirstPreference, PromptFirstUnpaired = _collators()
    budget = cfg.max_length if ours else None
    if cfg.mode == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, loss_type=["sigmoid"])
        cols = ["prompt", "chosen", "rejected"]
        train_ds = _to_dataset(data.train, cols)
        eval_ds = _to_dataset(data.validation, cols) if has_eval else None
        collator = PromptFirstPreference(pad_token_id=_pad_id(tokenizer), budget=budget)
        cls = DPOTrainer
    else:
        from trl import KTOConfig, KTOTrainer

        # Drop a last singleton batch: its KL estimate would compare a row with itself.
        args = KTOConfig(**common, dataloader_drop_last=n_train >= bs)
        cols = ["prompt", "completion", "label"]
        train_ds = _to_dataset(kto_order(data.train, cfg.seed), cols)
        eval_ds = _to_dataset(kto_order(data.validation, cfg.seed, "validation"), cols) if has_eval else None
        collator = PromptFirstUnpaired(pad_token_id=_pad_id(tokenizer), budget=budget)
        cls = KTOTrainer
    try:
        trainer = cls(model=model, ref_model=None, args=args, data_collator=collator, train_dataset=train_ds,
                      eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config,
                      callbacks=callbacks)
    except ValueError as e:
        if "batch size must be > 1" in str(e):  # validated above; kept for configs built around validate()
            raise UserError("KTO needs a per-device batch size of at least 2") from None
        raise
    # Keep the trainer's progress bar but not its raw dict dump of every log event: our callback prints a line.
    from transformers.trainer_callback import ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            pass

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly)
    if len(trainer.train_dataset) == 0:
        raise UserError(f"every training prompt is at least max_length={cfg.max_length} tokens long, so TRL's "
                        f"keep_start truncation dropped all examples: use --truncation prompt or raise --max_length")
    return trainer, total


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


def _last(history: list[dict], marker: str) -> dict:
    for entry in reversed(history):
        if marker in entry:
            return {k: v for k, v in entry.items() if isinstance(v, int | float)}
    return {}


# ------------------------------------------------------------------------------------------------------ evaluation


def _judge_config(data: Data):
    from prefsynth.config import from_dict
    from prefsynth.judge import JudgeConfig

    try:
        return from_dict(JudgeConfig, (data.provenance.get("config") or {}).get("judge") or {})
    except (ValueError, TypeError):  # a manifest from another prefsynth version
        return JudgeConfig()


def _templates(data: Data):
    from prefsynth.prompts import DEFAULT_DIR, PromptConfig, Templates

    stored = ((data.provenance.get("config") or {}).get("prompts") or {}).get("dir")
    folder = Path(stored) if stored and (Path(stored) / "judge.j2").exists() else DEFAULT_DIR
    return Templates(PromptConfig(dir=folder))


def _eval_backend(ref, model, tokenizer, cfg: TrainConfig, system_prompt: str | None):
    """The transformers backend of the generate stage, on an already loaded (PEFT) model: same batched sampler with
    one seeded generator per request, same label-logprob code for the judge."""
    import torch

    from prefsynth.engines import Backend, TransformersBackend
    from prefsynth.generate import GenerateConfig

    class Loaded(TransformersBackend):
        def __init__(self):
            gen_cfg = GenerateConfig(temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                                     max_tokens=cfg.eval.max_tokens, seed=cfg.seed, batch_size=cfg.eval.batch_size,
                                     system_prompt=system_prompt)
            Backend.__init__(self, ref, gen_cfg)
            self.torch = torch
            self.device = next(model.parameters()).device
            self._tok = tokenizer
            self.model_ = model
            tokenizer.padding_side = "left"  # decoding appends on the right
            eos = model.generation_config.eos_token_id if model.generation_config else None
            self.eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])

    return Loaded()


def _render_prompt(tokenizer, prompt) -> str:
    """The prompt exactly as TRL formatted it for training: chat template for messages, raw text otherwise."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def evaluate(cfg: TrainConfig, data: Data, model, tokenizer, ref, log_line: Callable[[str], None]) -> dict:
    """Reviews for the validation titles from base and base + adapter, judged by the base model and VADER."""
    from prefsynth.build import clean_review
    from prefsynth.engines import Request
    from prefsynth.generate import request_seed
    from prefsynth.judge import lexicon_scores, llm_scores

    val = data.validation.unique("title", keep="first", maintain_order=True).sort("title")
    if val.height == 0 or cfg.eval.titles == 0:
        return {}
    val = val.head(cfg.eval.titles)
    titles = val.get_column("title").to_list()
    prompts = [_render_prompt(tokenizer, p) for p in val.get_column("prompt").to_list()]
    prov = data.provenance
    chosen = prov.get("chosen", "negative")
    system_prompt = ((prov.get("config") or {}).get("generate") or {}).get("system_prompt")
    backend = _eval_backend(ref, model, tokenizer, cfg, system_prompt)
    # Same seed per title for both models: differences come from the adapter, not from the dice.
    requests = [Request(str(i), p, request_seed(f"{cfg.seed}\0{t}")) for i, (t, p) in enumerate(zip(titles, prompts))]
    was_training = model.training
    model.eval()
    t0 = time.time()
    texts: dict[str, list[str]] = {}
    for name, adapter in (("base", False), ("tuned", True)):
        log_line(f"evaluation: {name} model writes {len(requests)} reviews")
        with _adapter(model, adapter):
            outs = {o.key: o.text for o in backend.generate(requests)}
        raw = [outs[r.key] for r in requests]
        texts[name] = pl.DataFrame({"t": raw}).select(clean_review(pl.col("t"))).to_series().to_list()
    jcfg = _judge_config(data)
    templates = _templates(data)
    scores: dict[str, dict[str, list[float]]] = {}
    for name in ("base", "tuned"):
        s: dict[str, list[float]] = {}
        if jcfg.lexicon:
            s["lexicon"] = lexicon_scores(texts[name])
        if jcfg.llm:
            # The judge is the base model (adapter off) for both sides: a tuned judge would grade its own work.
            kw = {"calibrate": jcfg.calibrate} if hasattr(jcfg, "calibrate") else {}
            with _adapter(model, False):
                s["llm"] = llm_scores(backend, templates, texts[name], **kw)
        if "llm" in s and "lexicon" in s:
            w = jcfg.llm_weight
            s["combined"] = [w * a + (1 - w) * b for a, b in zip(s["llm"], s["lexicon"])]
        else:
            s["combined"] = s.get("llm") or s.get("lexicon") or [0.5] * len(titles)
        scores[name] = s
    if was_training:
        model.train()
    return summarize_evaluation(titles, texts, scores, chosen, round(time.time() - t0, 1))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins vs losses at p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


class _adapter:
    """Context: run the PEFT model with its adapter on or off."""

    def __init__(self, model, on: bool):
        self.model, self.on, self.ctx = model, on, None

    def __enter__(self):
        if not self.on:
            self.ctx = self.model.disable_adapter()
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def summarize_evaluation(titles: list[str], texts: dict[str, list[str]], scores: dict[str, dict[str, list[float]]],
                         chosen: str, seconds: float) -> dict:
    """Negativity rate of each model, and the share of titles where the tuned review is further toward the chosen
    polarity than the base one (ties count half)."""
    n = len(titles)
    sign = 1.0 if chosen == "negative" else -1.0

    def rate(vals):
        return round(sum(v > 0.5 for v in vals) / n, 4)

    base, tuned = scores["base"]["combined"], scores["tuned"]["combined"]
    won = sum(sign * (t - b) > 0 for b, t in zip(base, tuned))
    lost = sum(sign * (t - b) < 0 for b, t in zip(base, tuned))
    win_rate = (won + 0.5 * (n - won - lost)) / n
    out = {
        "titles": n, "chosen": chosen, "target": "negative" if chosen == "negative" else "positive",
        "negativity_rate_base": rate(base), "negativity_rate_tuned": rate(tuned),
        "mean_negativity_base": round(statistics.fmean(base), 4),
        "mean_negativity_tuned": round(statistics.fmean(tuned), 4),
        "win_rate": round(win_rate, 4), "wins": won, "losses": lost, "ties": n - won - lost,
        # Could a coin have done this? Two-sided sign test on wins vs losses (ties left out).
        "sign_test_p": round(sign_test(won, lost), 4),
        "by_judge": {j: {"negativity_rate_base": rate(scores["base"][j]),
                         "negativity_rate_tuned": rate(scores["tuned"][j]),
                         "mean_base": round(statistics.fmean(scores["base"][j]), 4),
                         "mean_tuned": round(statistics.fmean(scores["tuned"][j]), 4)}
                     for j in scores["base"] if j != "combined"},
        "mean_words_base": round(statistics.fmean(len(t.split()) for t in texts["base"]), 1),
        "mean_words_tuned": round(statistics.fmean(len(t.split()) for t in texts["tuned"]), 1),
        "seconds": seconds,
        "samples": [{"title": t, "base": b, "tuned": u, "score_base": round(sb, 3), "score_tuned": round(su, 3)}
                    for t, b, u, sb, su in zip(titles, texts["base"], texts["tuned"], base, tuned)],
    }
    return out


# ---------------------------------------------------------------------------------------------------------- output


def _verdict(e: dict) -> str:
    if not e:
        return "No evaluation was run (eval.titles = 0 or no validation titles)."
    d = e["negativity_rate_tuned"] - e["negativity_rate_base"]
    if e["chosen"] != "negative":
        d = -d
    p = e["sign_test_p"]
    moves = {j: v["negativity_rate_tuned"] - v["negativity_rate_base"] for j, v in e.get("by_judge", {}).items()}
    if len(moves) == 2 and min(moves.values()) < 0 < max(moves.values()):
        # Seen on SmolLM2: VADER 10% -> 70% negative while the 135M LLM judge said 20% -> 0%.
        return (f"The judges disagree on the direction (negativity rate "
                f"{', '.join(f'{j} {100 * v:+.0f} pp' for j, v in moves.items())}): read the samples before trusting the combined score (win rate {e['win_rate']:.0%}, "
                f"sign test p = {p:.3g}).")
    if e["win_rate"] > 0.5 and d >= 0 and p < 0.05:
        return (f"The data worked: the tuned model's reviews are more {e['target']} than the base model's "
                f"(win rate {e['win_rate']:.0%}, sign test p = {p:.3g}).")
    if e["win_rate"] < 0.5 and p < 0.05:
        return (f"The tuned model moved AWAY from {e['target']} reviews (win rate {e['win_rate']:.0%}, p = {p:.3g}): "
                f"check the chosen/rejected direction and the label noise of the data.")
    return (f"No clear effect at n={e['titles']} titles (win rate {e['win_rate']:.0%}, sign test p = {p:.3g}): "
            f"train longer, or evaluate on more titles.")


def render_report(cfg: TrainConfig, metrics: dict) -> str:
    e = metrics.get("evaluation") or {}
    tr, ev = metrics.get("train", {}), metrics.get("eval", {})
    base = metrics["base_model"]
    front = ["---", "library_name: peft", f"tags: [prefsynth, trl, {cfg.mode}, lora]"]
    if metrics["base_model"].get("hub_id"):
        front.append(f"base_model: {json.dumps(base['hub_id'])}")
    if metrics["data"].get("hub_id"):
        front.append(f"datasets: [{json.dumps(metrics['data']['hub_id'])}]")
    front.append("---")
    lines = front + [
        f"# {cfg.mode.upper()} LoRA adapter ({metrics['data']['config']} data)", "",
        f"**{_verdict(e)}**", "",
        f"- base model: {base['name']} (fingerprint `{base['fingerprint'][:12]}`)",
        f"- data: `{metrics['data']['source']}`" + (f" @ `{metrics['data']['revision']}`"
                                                    if metrics['data'].get('revision') else "")
        + f", {metrics['data']['train_rows']} train / {metrics['data']['validation_rows']} validation rows",
        f"- {metrics['steps']} steps, batch {metrics['hyperparameters']['batch_size']}, lr {cfg.lr:g} "
        f"({cfg.scheduler}), beta {cfg.beta:g}, LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} "
        f"dropout={cfg.lora.dropout:g}, max_length {cfg.max_length} (truncation: {cfg.truncation})",
        f"- device {metrics['device']['kind']} ({metrics['device']['dtype']}, {metrics['device']['optim']}), "
        f"{metrics['seconds']:.0f}s, {metrics['seconds_per_step']:.2f}s/step", "",
        "## Evaluation: reviews of validation titles from the neutral dataset prompt", "",
    ]
    if e:
        lines += [
            f"Each model wrote one review per title ({e['titles']} titles, same sampling seed for both); the "
            f"polarity judge (LLM judge = base model with the adapter off, plus VADER) scored them.", "",
            "| | base | tuned |", "|---|---|---|",
            f"| negativity rate (combined judge > 0.5) | {e['negativity_rate_base']:.0%} | "
            f"{e['negativity_rate_tuned']:.0%} |",
            f"| mean negativity score | {e['mean_negativity_base']:.3f} | {e['mean_negativity_tuned']:.3f} |",
            *[f"| negativity rate, {j} judge | {v['negativity_rate_base']:.0%} | {v['negativity_rate_tuned']:.0%} |"
              for j, v in e["by_judge"].items()],
            *[f"| mean score, {j} judge | {v['mean_base']:.3f} | {v['mean_tuned']:.3f} |"
              for j, v in e["by_judge"].items()],
            f"| mean words per review | {e['mean_words_base']} | {e['mean_words_tuned']} |", "",
            f"Tuned review more {e['target']} than the base review for the same title: **{e['win_rate']:.0%}** "
            f"of titles ({e['wins']} wins, {e['losses']} losses, {e['ties']} ties; ties count half; two-sided "
            f"sign test p = {e['sign_test_p']:.3g}).", "",
            "### Samples", "",
        ]
        for s in e["samples"][:3]:
            lines += [f"*{s['title']}*", "",
                      f"- base ({s['score_base']:.2f}): {_one_line(s['base'])}",
                      f"- tuned ({s['score_tuned']:.2f}): {_one_line(s['tuned'])}", ""]
    else:
        lines += ["Not run.", ""]
    keys = [k for k in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl")
            if k in tr or f"eval_{k}" in ev]
    lines += ["## Training metrics (last logged values)", "", "| metric | train | validation |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(tr.get(k))} | {_fmt(ev.get('eval_' + k))} |" for k in keys]
    lines += ["", "![training curves](training_curves.png)", "",
              "Reading the curves: DPO rewards are log-probability ratios against the base model, times beta. Both "
              "chosen and rejected rewards often go negative (the model lowers the likelihood of everything it "
              "was shown); what matters is the margin and the accuracy, and above all the evaluation above.", ""]
    return "\n".join(lines)


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())  # a newline inside a list item would end it
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}"


# ----------------------------------------------------------------------------------------------------------- push


def push(folder: Path, cfg: TrainConfig) -> dict:
    """Upload the output folder to a Hub model repo in one commit, through the dataset publisher's client
    settings, retries and error messages."""
    from dataclasses import replace

    from huggingface_hub import CommitOperationAdd, HfApi, constants

    from prefsynth import publish as pub

    pcfg = pub.PublishConfig(repo_id=cfg.push_to or "", private=cfg.private, endpoint=cfg.endpoint)
    pub._check_repo_id(pcfg.repo_id, False)
    endpoint = pub._resolve_endpoint(pcfg)
    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to push the adapter")
    token = pub._get_token()
    repo_id = pcfg.repo_id
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}

    def step(fn, what, extra_status=()):
        try:
            return pub._retry(fn, pcfg, f"{what} ({repo_id})", extra_status, secret=token)
        except pub._Exhausted as e:
            raise UserError(f"pushing to {repo_id} failed: {pub._describe(e.last, endpoint)} {e.after}; the adapter "
                            f"is saved in {folder}") from None
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            if (err := pub._user_error(e, endpoint, repo_id, token)) is not None:
                raise UserError(f"{str(err).replace('dataset repo', 'model repo')}; the adapter is saved in "
                                f"{folder}") from None
            raise

    with pub._client_settings(pcfg):
        api = HfApi(endpoint=endpoint, token=token, library_name="prefsynth")
        pub._check_token(api, replace(pcfg), endpoint, token)
        step(lambda: api.create_repo(repo_id, repo_type="model", private=cfg.private, exist_ok=True), "creating repo")

        def commit() -> str:
            head = api.model_info(repo_id, revision="main")
            ops = [CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(v)) for k, v in files.items()]
            info = api.create_commit(repo_id, ops, repo_type="model", revision="main", parent_commit=head.sha,
                                     commit_message=f"prefsynth: {cfg.mode.upper()} adapter")
            return info.oid

        revision = step(commit, "committing", extra_status=(412,))
    return {"repo_id": repo_id, "revision": revision, "url": f"{endpoint}/{repo_id}", "files": len(files)}


# ------------------------------------------------------------------------------------------------------------ main


def train(cfg: TrainConfig, step: Step = plain_step, log_line: Callable[[str], None] | None = None) -> TrainResult:
    """Train, evaluate and write `cfg.out` (replaced in one step when everything succeeded); optionally push."""
    say = log_line or (lambda s: log.info("%s", s))
    t_start = time.time()
    cfg.validate()
    out = check_writable_dir(cfg.resolved_out(), "training output")
    device = resolve_device(cfg)  # before loading anything: "no GPU" must fail in a second
    data = step(load_data, "load-data")(cfg)
    ref = resolve_base(cfg, data)
    say(f"{cfg.mode.upper()} on {data.config} ({data.train.height} train / {data.validation.height} validation rows) "
        f"from {data.source}; base model {ref.name}; device {device.kind} ({device.dtype}, {device.optim})")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock", what=f"training output {out}"), atomic_dir(out) as tmp:
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref.path)
            model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=getattr(torch, device.dtype))
        except Exception as e:  # noqa: BLE001 - a broken model folder is the user's to fix
            raise UserError(f"could not load {ref.name}: {type(e).__name__}: {str(e)[:200]}") from None
        progress = _callback(say)
        work = tmp / ".trainer"  # TRL's scratch space; removed before the folder is published
        trainer, total = _trainer(cfg, data, model, tokenizer, device, work, [progress])
        keys = ("chosen_ids", "rejected_ids") if cfg.mode == "dpo" else ("completion_ids",)
        trunc = truncation_stats(trainer.train_dataset, keys, cfg.max_length if cfg.truncation == "prompt" else None)
        trunc["dropped_by_trl"] = data.train.height - len(trainer.train_dataset)
        if trunc.get("prompt_cut_share"):
            say(f"truncation: {trunc['prompt_cut_share']:.0%} of prompts cut from the left to fit max_length "
                f"{cfg.max_length} (prompt {trunc['prompt_tokens_min']}-{trunc['prompt_tokens_max']} tokens, "
                f"~{trunc['prompt_tokens_kept_mean']:.0f} kept); {trunc['completion_cut_share']:.0%} of completions "
                f"cut")
        t0 = time.time()
        step(lambda: trainer.train(), "train")()
        train_seconds = time.time() - t0
        history = list(trainer.state.log_history)
        peft_model = trainer.model
        evaluation = step(evaluate, "evaluate")(cfg, data, peft_model, tokenizer, ref, say)

        import shutil

        shutil.rmtree(work, ignore_errors=True)
        peft_model.save_pretrained(tmp)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(tmp)
        steps_done = trainer.state.global_step
        timed = progress.step_seconds[1:] or progress.step_seconds  # the first step pays for warm-up
        metrics = {
            "mode": cfg.mode, "steps": steps_done, "epochs": round(trainer.state.epoch or 0.0, 3),
            "seconds": round(train_seconds, 1),
            "seconds_per_step": round(statistics.median(timed), 3) if timed else 0.0,
            "device": dataclasses.asdict(device),
            "base_model": {"name": ref.name, "path": ref.path, "fingerprint": ref.fingerprint,
                           "hub_id": ref.name if "/" in ref.name else None},  # folder names hold no "/"
            "data": {"source": data.source, "revision": data.revision, "config": data.config,
                     "hub_id": None if data.revision is None else data.source,
                     "version": data.manifest.get("version"), "train_rows": data.train.height,
                     "validation_rows": data.validation.height, "truncation": trunc},
            "hyperparameters": {"batch_size": cfg.effective_batch_size(), "total_steps": total,
                                "trl_args": _trl_args(trainer.args)},
            "train": _last(history, "loss"), "eval": _last(history, "eval_loss"),
            "evaluation": evaluation, "history": history,
        }
        from prefsynth.plots import training_curves

        (tmp / "training_curves.png").write_bytes(training_curves(history, cfg.mode))
        atomic_write_json(tmp / "train_config.json", to_dict(cfg) | {"resolved": {
            "out": str(out), "base_model": ref.path, "batch_size": cfg.effective_batch_size(), "total_steps": total,
            "device": device.kind, "dtype": device.dtype, "optim": device.optim}})
        atomic_write_json(tmp / "metrics.json", metrics)
        (tmp / "README.md").write_text(render_report(cfg, metrics), encoding="utf-8")
    say(f"wrote {out} in {time.time() - t_start:.0f}s")
    pushed = step(push, "push")(out, cfg) if cfg.push_to else None
    return TrainResult(str(out), cfg.mode, ref.name, steps_done, metrics["seconds"], metrics["seconds_per_step"],
                       metrics["train"], metrics["eval"],
                       {k: v for k, v in evaluation.items() if k != "samples"} if evaluation else {}, pushed)


def _trl_args(args) -> dict:
    """The TRL config as run (JSON-safe), minus paths and noise."""
    d = args.to_dict()
    keep = ("learning_rate", "lr_scheduler_type", "warmup_steps", "max_steps", "num_train_epochs", "beta",
            "max_length", "truncation_mode", "loss_type", "per_device_train_batch_size", "gradient_accumulation_steps",
            "optim", "bf16", "fp16", "use_cpu", "gradient_checkpointing", "seed", "disable_dropout",
            "train_sampling_strategy", "desirable_weight", "undesirable_weight", "logging_steps", "eval_steps")
    return {k: d[k] for k in keep if k in d}
