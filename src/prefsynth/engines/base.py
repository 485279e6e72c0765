"""The contract every generation engine keeps: requests in, finished outputs streamed back, label log-probabilities
for the judge on the same loaded model.

An engine is configured by the generate stage's `GenerateConfig` (sampling, system message, engine settings); the
registry (`prefsynth.engines.registry`) picks, loads and caches one per process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefsynth.model import ModelRef

if TYPE_CHECKING:
    from prefsynth.generate import GenerateConfig


@dataclass
class Request:
    key: str
    prompt: str  # already chat-formatted
    seed: int


@dataclass
class Output:
    key: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def resolve_dtype(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if cuda_available() else "float32"


def plain_chat(messages: list[dict]) -> str:
    """A conversation as text, for models without a chat template."""
    return "\n\n".join(m["content"] for m in messages) + "\n"


class Backend(ABC):
    name: str
    in_process = False  # True when the engine has no worker processes of its own to stop
    # Tokens generated so far, in-flight requests included, for engines that can tell (None: only at the end);
    # `on_step` is called after every engine step while requests run (prefsynth.progress uses both).
    tokens_generated: int | None = None
    on_step: Callable[[], None] | None = None

    def __init__(self, model: ModelRef, cfg: GenerateConfig):
        self.model = model
        self.cfg = cfg
        self.dtype = cfg.dtype  # what the engine computes in; subclasses resolve "auto"

    @property
    @abstractmethod
    def tokenizer(self): ...

    def chat(self, text: str, system: str | None = None) -> str:
        """Wrap a user message in the model's chat template, after `system` (default: the configured system
        message) when there is one."""
        messages = [{"role": "user", "content": text}]
        system = system if system is not None else self.cfg.system_prompt
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return plain_chat(messages)

    @abstractmethod
    def generate(self, requests: list[Request]) -> Iterator[Output]:
        """Yield outputs as requests finish (any order)."""

    @abstractmethod
    def label_logprobs(self, prompts: list[str], token_ids: list[int]) -> Iterator[tuple[int, list[float]]]:
        """(prompt index, log-probability of each of `token_ids` as the next token), streamed as they finish."""

    def close(self) -> None:
        pass
