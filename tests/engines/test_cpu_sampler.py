"""The CPU top-k/top-p kernel gives vLLM's own mask, without sorting the vocabulary.

The two sum probabilities in different orders (vLLM: ascending over the sorted vocabulary; ours: descending over
the top candidates), so a token whose mass-above sits within float32 rounding of p can fall on either side. The
test allows exactly that and nothing else: every disagreement must be such a boundary token."""

from __future__ import annotations

import pytest
import torch

vllm_sampler = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")

from prefsynth.engines import cpu_sampler  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    cpu_sampler.install_fast_sampler()
    return cpu_sampler._original


@pytest.mark.parametrize("temperature", [0.5, 0.7, 1.0, 3.0])
@pytest.mark.parametrize("p", [0.9, 0.95, 0.999])
@pytest.mark.parametrize("k", [None, 50, 700])
def test_same_mask_as_vllm(reference, temperature, p, k):
    g = torch.Generator().manual_seed(int(temperature * 100 + p * 1000 + (k or 0)))
    logits = torch.randn(32, 49152, generator=g) * 4 / temperature
    P = torch.full((32,), p)
    K = None if k is None else torch.randint(1, k + 1, (32,), generator=g)
    want = reference(logits.clone(), K, P, True)
    got = cpu_sampler.top_k_top_p(logits.clone(), K, P, True)
    differ = torch.isinf(want) != torch.isinf(got)
    for row, col in differ.nonzero().tolist():
        assert abs(_mass_above(logits[row], col, None if K is None else int(K[row])) - p) < 1e-5
    assert differ.sum() <= 2  # a handful of boundary tokens in 32 x 49k, if any
    both = ~torch.isinf(want) & ~torch.isinf(got)
    assert torch.equal(want[both], got[both])  # kept tokens keep their logits


def _mass_above(row: torch.Tensor, col: int, k: int | None) -> float:
    """float64 probability mass of the tokens ranked strictly above `col` (within the top-k when set)."""
    order = row.double().argsort(descending=True)
    vals = row.double()[order][: k or None]
    probs = torch.softmax(vals, dim=0)
    rank = int((order == col).nonzero()[0, 0])
    return float(probs[:rank].sum())


def test_installed_in_vllm(reference):
    assert vllm_sampler.apply_top_k_top_p_pytorch is cpu_sampler.top_k_top_p
    logits = torch.randn(4, 1000)
    out = vllm_sampler.apply_top_k_top_p(logits.clone(), None, torch.full((4,), 0.9))
    assert torch.equal(torch.isinf(out), torch.isinf(reference(logits.clone(), None, torch.full((4,), 0.9), True)))


def test_registered_as_a_vllm_plugin(monkeypatch):
    """`prefsynth engine` servers get the fast sampler through this entry point (pyproject.toml): it must load, and
    act only when asked."""
    from importlib.metadata import entry_points

    [ep] = [e for e in entry_points(group="vllm.general_plugins") if e.name == "prefsynth_fast_sampler"]
    assert ep.load() is cpu_sampler.register

    def vllms_own(*args):
        raise AssertionError("not called")

    monkeypatch.setattr(cpu_sampler, "_original", cpu_sampler._original)  # both restored after the test
    monkeypatch.setattr(vllm_sampler, "apply_top_k_top_p_pytorch", vllms_own)
    monkeypatch.delenv("PREFSYNTH_FAST_SAMPLER", raising=False)
    cpu_sampler.register()
    assert vllm_sampler.apply_top_k_top_p_pytorch is vllms_own
    monkeypatch.setenv("PREFSYNTH_FAST_SAMPLER", "1")
    cpu_sampler.register()
    assert vllm_sampler.apply_top_k_top_p_pytorch is cpu_sampler.top_k_top_p
