"""transformers as an engine: the fallback where vLLM is not installed, and the evaluation engine of training (on a
model already loaded with its adapter, `TransformersBackend.from_loaded`).

Batched decoding with one seeded torch.Generator per request, so each review depends on its own seed and not on
which other prompts share its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prefsynth.engines.base import Backend, Output, Request, cuda_available, resolve_dtype
from prefsynth.errors import UserError
from prefsynth.model import ModelRef

if TYPE_CHECKING:
    from prefsynth.generate import GenerateConfig


def _eos_ids(model, tokenizer) -> set[int]:
    """The tokens that end a review: the model's generation config, else the tokenizer's end-of-sequence token."""
    eos = model.generation_config.eos_token_id if model.generation_config else None
    return set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])


class TransformersBackend(Backend):
    """Fallback for machines without vLLM: batched decoding with a per-request torch.Generator, so each review
    depends on its own seed and not on which other prompts share its batch."""

    name = "transformers"
    in_process = True

    def __init__(self, model: ModelRef, cfg: GenerateConfig):
        super().__init__(model, cfg)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if cuda_available() else "cpu"
        self.dtype = resolve_dtype(cfg.dtype)
        try:
            self._tok = AutoTokenizer.from_pretrained(model.path)
            self.model_ = AutoModelForCausalLM.from_pretrained(
                model.path, dtype=getattr(torch, self.dtype)).to(self.device).eval()
        except Exception as e:  # noqa: BLE001
            raise UserError(f"transformers could not load {model.name}: {type(e).__name__}: {str(e)[:200]}") from None
        self._tok.padding_side = "left"
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self.eos = _eos_ids(self.model_, self._tok)

    @classmethod
    def from_loaded(cls, model_ref: ModelRef, model, tokenizer, cfg: GenerateConfig) -> TransformersBackend:
        """This engine on a model and tokenizer already in memory (training's evaluation: a PEFT model whose adapter
        it switches on and off), on the model's own device. The tokenizer is switched to left padding (decoding
        appends on the right); `dtype` stays as `cfg` names it, since nothing is loaded."""
        import torch

        self = cls.__new__(cls)
        Backend.__init__(self, model_ref, cfg)
        self.torch = torch
        self.device = next(model.parameters()).device
        self._tok = tokenizer
        self.model_ = model
        tokenizer.padding_side = "left"
        self.eos = _eos_ids(model, tokenizer)
        return self

    @property
    def tokenizer(self):
        return self._tok

    # Prompts are padded to a multiple of this many tokens and batched only with prompts of the same padded length.
    # A prompt's numbers then depend on its own padded length alone, not on which prompts share its batch: a run
    # resumed after a crash computes exactly what the uninterrupted run would have.
    PAD_BUCKET = 32

    def _encode(self, prompts: list[str], length: int):
        return self._tok(prompts, return_tensors="pt", padding="max_length", max_length=length,
                         add_special_tokens=False).to(self.device)

    def _batches(self, prompts: list[str]) -> Iterator[tuple[list[int], int]]:
        """(indices, padded length) per batch: grouped by length bucket, in a fixed order."""
        lengths = [len(ids) for ids in self._tok(prompts, add_special_tokens=False)["input_ids"]]
        buckets: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            buckets.setdefault(-(-n // self.PAD_BUCKET) * self.PAD_BUCKET, []).append(i)
        for length in sorted(buckets):
            idx = buckets[length]
            for k in range(0, len(idx), self.cfg.batch_size):
                yield idx[k:k + self.cfg.batch_size], length

    def _sample(self, logits, gens, seen):
        torch = self.torch
        if self.cfg.repetition_penalty != 1.0:  # vLLM's (and CTRL's) rule over prompt and review tokens so far
            picked = logits.gather(-1, seen)
            picked = torch.where(picked > 0, picked / self.cfg.repetition_penalty, picked * self.cfg.repetition_penalty)
            logits = logits.scatter(-1, seen, picked)
        if self.cfg.temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / self.cfg.temperature, dim=-1)
        if self.cfg.top_p < 1.0:
            sorted_p, idx = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.cfg.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(gens)])

    def _generate_batch(self, batch: list[Request], length: int) -> list[Output]:
        torch = self.torch
        enc = self._encode([r.prompt for r in batch], length)
        gens = [torch.Generator(device=self.device).manual_seed(r.seed) for r in batch]
        ids, mask = enc["input_ids"], enc["attention_mask"]
        n = len(batch)
        out_tokens: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        stops = self.cfg.stop_strings()
        stopped = [False] * n
        # The prompt's tokens for the repetition penalty; left pads stand in as the last prompt token (already there).
        seen = self.torch.where(mask.bool(), ids, ids[:, -1:])
        past = None
        step_ids = ids
        with torch.inference_mode():
            for _ in range(self.cfg.max_tokens):
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                out = self.model_(input_ids=step_ids, attention_mask=mask, past_key_values=past, use_cache=True,
                                  position_ids=pos[:, -step_ids.shape[1]:])
                past = out.past_key_values
                nxt = self._sample(out.logits[:, -1, :], gens, seen)
                seen = torch.cat([seen, nxt.unsqueeze(-1)], dim=-1)
                for i in range(n):
                    if not done[i]:
                        t = int(nxt[i])
                        if t in self.eos:
                            done[i] = True
                        else:
                            out_tokens[i].append(t)
                            if stops and any(s in self._tok.decode(out_tokens[i][-8:]) for s in stops):
                                done[i] = stopped[i] = True
                if all(done):
                    break
                step_ids = nxt.unsqueeze(-1)
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], dim=-1)
        prompt_lens = enc["attention_mask"].sum(-1).tolist()
        texts = [self._tok.decode(t, skip_special_tokens=True) for t in out_tokens]
        for i in range(n):
            if stopped[i]:  # like vLLM: the text ends before the stop string, which is not returned
                texts[i] = texts[i][:min(texts[i].find(s) for s in stops if s in texts[i])]
        return [Output(r.key, texts[i], int(prompt_lens[i]), len(out_tokens[i]), "stop" if done[i] else "length")
                for i, r in enumerate(batch)]

    def generate(self, requests: list[Request]) -> Iterator[Output]:
        ordered = sorted(requests, key=lambda r: r.key)
        for idx, length in self._batches([r.prompt for r in ordered]):
            yield from self._generate_batch([ordered[i] for i in idx], length)

    def label_logprobs(self, prompts: list[str], token_ids: list[int]) -> Iterator[tuple[int, list[float]]]:
        torch = self.torch
        with torch.inference_mode():
            for idx, length in self._batches(prompts):
                enc = self._encode([prompts[i] for i in idx], length)
                pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = self.model_(**enc, position_ids=pos).logits[:, -1, :].float()
                for j, row in zip(idx, torch.log_softmax(logits, dim=-1)[:, token_ids].tolist()):
                    yield j, row
