"""vLLM on CPU: how prefsynth runs the engine on a small machine, and one faster sampling kernel.

Measured on this project's 2-core machine (bench/bench.py): the default multi-process engine reserves one core for
its scheduler and decodes on the other (~145 tok/s on SmolLM2-135M), starts in ~25 s, and its worker processes
outlive a killed parent. In-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, executor "uni", OpenMP on every core) it
decodes on both cores (~255 tok/s), starts in ~5 s, and dies with its parent.

Top-p sampling then took ~45% of decode time: vLLM's CPU path sorts the whole 49k vocabulary for every sequence at
every step. `top_k_top_p` computes the same mask from a top-512 slice (topk is linear in the vocabulary) and falls
back to vLLM's own code for the rare rows whose top-512 tokens hold less than the top-p mass.
"""

from __future__ import annotations

import os

import torch

CANDIDATES = 512
_original = None


def configure_in_process() -> None:
    """Environment for an in-process CPU engine; must run before vllm.LLM is created."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None,
                allow_cpu_sync: bool = False) -> torch.Tensor:
    """Drop-in for vllm's `apply_top_k_top_p_pytorch`: the same -inf mask without sorting the vocabulary (up to a
    token whose mass-above lies within float32 rounding of p, which the two summation orders may place differently).

    vLLM keeps a token when the probability mass of the tokens strictly above it is below p (top-p applied to the
    top-k-renormalised distribution when both are set). If the top-K slice already holds mass >= p, every token
    outside it is dropped anyway, so the slice decides the whole mask.
    """
    if p is None:
        return _original(logits, k, p, allow_cpu_sync)
    vocab = logits.shape[1]
    kmax = int(k.max()) if k is not None else 0
    cand = min(vocab, max(CANDIDATES, kmax))
    vals, idx = logits.topk(cand, dim=-1)  # descending
    if k is not None:
        pos = torch.arange(cand, device=logits.device).unsqueeze(0)
        vals = vals.masked_fill(pos >= k.to(torch.long).unsqueeze(1), float("-inf"))
        log_z = torch.logsumexp(vals, dim=-1, keepdim=True)  # renormalised over the top-k set
    else:
        log_z = torch.logsumexp(logits, dim=-1, keepdim=True)  # over the whole vocabulary
    probs = (vals - log_z).exp()
    covered = probs.sum(dim=-1) >= p  # rows the slice decides exactly
    if not bool(covered.all()):
        return _original(logits, k, p, allow_cpu_sync)
    above = probs.cumsum(dim=-1) - probs  # mass strictly above each candidate
    keep = above < p.unsqueeze(1)
    keep[:, 0] = True
    kept = vals.masked_fill(~keep, float("-inf"))
    return logits.fill_(float("-inf")).scatter_(1, idx, kept)


def install_fast_sampler() -> bool:
    """Swap vLLM's CPU top-k/top-p for `top_k_top_p` in this process. Returns False if vLLM's layout changed
    (then nothing is patched and vLLM's own code runs)."""
    global _original
    try:
        from vllm.v1.sample.ops import topk_topp_sampler as mod
    except ImportError:
        return False
    current = getattr(mod, "apply_top_k_top_p_pytorch", None)
    if current is None:
        return False
    if current is not top_k_top_p:
        _original = current
        mod.apply_top_k_top_p_pytorch = top_k_top_p
    return True


def register() -> None:
    """vLLM general plugin (entry point `vllm.general_plugins`): vLLM calls it in every process it starts, which is
    how the fast sampler reaches the engine process of a `prefsynth engine` server. It acts only where that
    command asked for it (PREFSYNTH_FAST_SAMPLER=1), so other vLLM programs in this environment run vLLM's code."""
    if os.environ.get("PREFSYNTH_FAST_SAMPLER") == "1":
        install_fast_sampler()
