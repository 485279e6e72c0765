"""What a training run is told: `TrainConfig` (it becomes `prefsynth train`'s flags) and its offline checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prefsynth import hub
from prefsynth.config import opt
from prefsynth.constants import DEFAULT_OUT, OUT_DIR
from prefsynth.errors import UserError

DEFAULT_BATCH = {"dpo": 10, "kto": 16}  # the Reviewer #2 schedule; DPO counts steps, KTO epochs (TrainConfig)
is_local = hub.is_local  # whether --data names a local folder (else a Hub dataset repo namespace/name)


@dataclass
class LoraSettings:
    r: int = opt(8, "LoRA rank")
    alpha: int = opt(16, "LoRA alpha (scale = alpha / r)")
    dropout: float = opt(0.05, "LoRA dropout (TRL's disable_dropout is turned off so this value is really used)")
    targets: str = opt("all-linear", "modules to adapt: 'all-linear' or a comma list such as q_proj,v_proj")

    def target_modules(self) -> str | list[str]:
        """`targets` as PEFT's LoraConfig takes it."""
        if self.targets == "all-linear":
            return "all-linear"
        return [t.strip() for t in self.targets.split(",") if t.strip()]


@dataclass
class EvalSettings:
    titles: int = opt(100, "validation titles to write reviews for after training (0 skips the evaluation)")
    max_tokens: int = opt(96, "new tokens per evaluation review")
    temperature: float = opt(0.7, "sampling temperature of the evaluation reviews")
    top_p: float = opt(0.95, "nucleus sampling of the evaluation reviews")
    batch_size: int = opt(32, "prompts per generation batch")


@dataclass
class TrainConfig:
    data: str = opt(str(DEFAULT_OUT), "dataset: a folder written by `prefsynth build`, or a Hub dataset repo "
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
    precompute_ref: bool = opt(True, "DPO: compute the reference log-probabilities once before training (TRL's "
                                     "precompute_ref_log_probs; the reference is the adapter-off base, so the "
                                     "numbers are the same) instead of a reference forward pass every step")
    seed: int = opt(0, "seed of LoRA init, data order and evaluation sampling")
    logging_steps: int | None = opt(None, "log every N steps; None: about 100 points over the run")
    eval_steps: int | None = opt(None, "validation loss every N steps; None: about 10 times per run; 0: never")
    eval: EvalSettings = field(default_factory=EvalSettings)
    push_to: str | None = opt(None, "Hub model repo namespace/name to upload the output folder to (optional)")
    private: bool = opt(True, "create the model repo private (ignored when it exists)")
    endpoint: str | None = opt(None, "Hub URL for --data and --push_to; unset: $HF_ENDPOINT, else huggingface.co")

    def resolved_out(self) -> Path:
        return Path(self.out).expanduser() if self.out else OUT_DIR / f"train-{self.mode}"

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
        if self.revision and is_local(self.data):
            raise UserError(f"--revision applies to Hub datasets, but {self.data} is a local folder")
        if self.push_to:
            hub.check_repo_id(self.push_to)

    def effective_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else DEFAULT_BATCH[self.mode]
