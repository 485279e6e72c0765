"""Train stage end to end (`prefsynth.train.run`): DPO and KTO with LoRA on the tiny model, against a dataset made
by the project's own build stage.

What this checks: both trainers run a few real optimizer steps through TRL 1.16; the adapter written to the output
folder reloads with PEFT and changes the model's logits; metrics, curves, config and report are written; the
evaluation generates and judges reviews end to end with the adapter really off for "base"; the Hub paths (dataset
by repo + revision, adapter push) work against the loopback Hub server; user mistakes are one-line errors.
What it cannot check: whether training helps (the tiny model writes noise); scripts/train_real.py measures that
on the bundled SmolLM2.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from prefsynth.errors import UserError
from prefsynth.train import EvalSettings, TrainConfig, train
from tiny_model import JUDGE_ALL, LOOSE_FILTERS, ONE_CANDIDATE

TITLES = Path(__file__).resolve().parents[1] / "data" / "titles.txt"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tiny_model: Path, tmp_path_factory) -> Path:
    """A real dataset from collect -> generate -> judge -> build -> write, on the tiny model (both configs)."""
    from prefsynth.build import BuildConfig
    from prefsynth.collect import CollectConfig
    from prefsynth.engines import close_backends
    from prefsynth.generate import GenerateConfig
    from prefsynth.judge import JudgeConfig
    from prefsynth.pipeline import PipelineConfig, run

    root = tmp_path_factory.mktemp("train-data")
    cfg = PipelineConfig(
        collect=CollectConfig(source=str(TITLES), n=24),
        generate=GenerateConfig(**ONE_CANDIDATE, model=str(tiny_model), backend="transformers", max_tokens=24,
                                cache_dir=root / "cache"),
        # The tiny model's noise fails most quality filters; keep every pair so there is data to train on.
        build=BuildConfig(out=root / "ds", formats="both", validation_fraction=0.25, **LOOSE_FILTERS),
        judge=JudgeConfig(**JUDGE_ALL),
    )
    try:
        run(cfg)
    finally:
        close_backends()
    return root / "ds"


def quick(data, out: Path, mode: str, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), mode=mode, out=out, steps=kw.pop("steps", 3), batch_size=kw.pop("batch_size", 4),
                       eval=EvalSettings(titles=kw.pop("titles", 3), max_tokens=8), **kw)


def logits(model_dir: Path, adapter: Path | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ids = tok("The paper proposes a novel method", return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**ids).logits


def test_dpo_trains_reloads_and_evaluates(built, tiny_model, tmp_path):
    out = tmp_path / "dpo"
    result = train(quick(built, out, "dpo", steps=4))

    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json", "train_config.json",
            "training_curves.png", "README.md"} <= files
    assert not any(name.startswith(".") for name in files)  # TRL's scratch folder is gone
    assert (out / "training_curves.png").read_bytes().startswith(PNG)

    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == result.steps == 4
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert key in m["train"], key
    assert "eval_loss" in m["eval"] and "eval_rewards/margins" in m["eval"]
    assert [h["step"] for h in m["history"] if "loss" in h] == [1, 2, 3, 4]
    assert m["device"] == {"kind": "cpu", "dtype": "float32", "bf16": False, "fp16": False, "optim": "adamw_torch",
                           "gradient_checkpointing": True}
    # The tiny tokenizer makes the neutral prompt ~450 tokens: every prompt is cut from the left, no completion is.
    trunc = m["data"]["truncation"]
    assert trunc["prompt_tokens_min"] > 128 and trunc["prompt_cut_share"] == 1.0
    assert trunc["completion_cut_share"] == 0.0 and trunc["dropped_by_trl"] == 0

    # The exact hyper-parameters: the saved config rebuilds the same TrainConfig; the base model was the one that
    # generated the data (nothing was passed).
    from prefsynth.config import from_dict, to_dict

    saved = json.loads((out / "train_config.json").read_text())
    assert saved.pop("resolved")["base_model"] == str(tiny_model.resolve())
    assert to_dict(from_dict(TrainConfig, saved)) == to_dict(quick(built, out, "dpo", steps=4))

    # The adapter reloads and changes the logits.
    base, tuned = logits(tiny_model, None), logits(tiny_model, out)
    assert (tuned - base).abs().max().item() > 1e-4

    # Evaluation: rates and win rate for 3 validation titles; "base" texts are exactly what the base model alone
    # writes with the same seeds (the adapter really was off).
    e = m["evaluation"]
    val_titles = sorted(set(pl.read_parquet(built / "paired" / "validation.parquet")["title"]))
    assert e["titles"] == 3 and [s["title"] for s in e["samples"]] == val_titles[:3]
    assert 0 <= e["negativity_rate_base"] <= 1 and 0 <= e["negativity_rate_tuned"] <= 1 and 0 <= e["win_rate"] <= 1
    assert set(e["by_judge"]) == {"llm", "lexicon"}
    assert [s["base"] for s in e["samples"]] == base_model_reviews(tiny_model, built, val_titles[:3])
    assert result.evaluation["win_rate"] == e["win_rate"] and "samples" not in result.evaluation
    report = (out / "README.md").read_text()
    assert "negativity rate" in report and "win rate" in report.lower()


def base_model_reviews(model_dir: Path, data: Path, titles: list[str]) -> list[str]:
    """Reviews from the plain generate-stage backend (no PEFT anywhere), seeded like the evaluation."""
    from prefsynth.filters import clean_review
    from prefsynth.engines import Request, TransformersBackend
    from prefsynth.generate import GenerateConfig, request_seed
    from prefsynth.model import resolve_model

    backend = TransformersBackend(resolve_model(str(model_dir)),
                                  GenerateConfig(temperature=0.7, top_p=0.95, max_tokens=8, seed=0, batch_size=32,
                                                 repetition_penalty=1.0, stop=[]))
    val = pl.read_parquet(data / "paired" / "validation.parquet").unique("title", keep="first").sort("title")
    prompts = {t: p for t, p in zip(val["title"], val["prompt"].to_list())}
    reqs = [Request(str(i), backend.tokenizer.apply_chat_template(prompts[t], tokenize=False,
                                                                  add_generation_prompt=True),
                    request_seed(f"0\0{t}")) for i, t in enumerate(titles)]
    texts = {o.key: o.text for o in backend.generate(reqs)}
    raw = [texts[r.key] for r in reqs]
    return pl.DataFrame({"t": raw}).select(clean_review(pl.col("t"))).to_series().to_list()


# ------------------------------------------------------------------------------------------------ KTO from the Hub


def test_kto_from_hub_revision_and_push(built, tiny_model, tmp_path, hub):
    """KTO on the unpaired config of a dataset published to the (loopback) Hub, pinned by tag, adapter pushed."""
    from prefsynth.publish import PublishConfig, publish

    [pub] = publish(built, PublishConfig(repo_id="tester/r2", endpoint=hub.endpoint, max_retries=0))
    out = tmp_path / "kto"
    cfg = quick("tester/r2", out, "kto", revision=pub.tag, titles=2, push_to="tester/r2-kto",
                endpoint=hub.endpoint)
    result = train(cfg)
    remote = hub.files("tester/r2-kto", repo_type="model")

    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["revision"] == pub.revision and m["data"]["config"] == "unpaired"
    for key in ("loss", "kl", "rewards/chosen", "rewards/rejected"):
        assert key in m["train"], key
    assert m["hyperparameters"]["trl_args"]["per_device_train_batch_size"] == 4
    assert m["evaluation"]["titles"] == 2
    assert result.pushed["repo_id"] == "tester/r2-kto"
    assert remote["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    assert json.loads(remote["metrics.json"]) == m
    base, tuned = logits(tiny_model, None), logits(tiny_model, out)
    assert (tuned - base).abs().max().item() > 1e-4


# --------------------------------------------------------------------------------------------------- truncation


def test_trl_keep_start_truncation_drops_everything(built, tmp_path):
    """What TRL 1.16 does on its own with max_length 128 and prompts longer than that: no example survives."""
    cfg = quick(built, tmp_path / "trl", "dpo", truncation="trl", steps=1)
    with pytest.raises(UserError, match="dropped all examples"):
        train(cfg)
    assert not (tmp_path / "trl").exists()  # nothing half-written


# --------------------------------------------------------------------------------------------------- user errors


def test_user_errors_are_one_line(built, tmp_path):
    import torch

    cases = [
        (quick(built, tmp_path / "a", "kto", batch_size=1), "KTO needs a per-device batch size of at least 2"),
        (quick(tmp_path / "missing", tmp_path / "b", "dpo"), "does not exist"),
        (quick(built, tmp_path / "c", "dpo", revision="v1"), "applies to Hub datasets"),
        (quick(built, tmp_path / "d", "dpo", push_to="not a repo"), "malformed repo id"),
    ]
    if not torch.cuda.is_available():
        cases.append((quick(built, tmp_path / "e", "dpo", device="cuda"), "no CUDA GPU"))
    paired_only = tmp_path / "paired-only"
    (paired_only / "paired").mkdir(parents=True)
    for f in (built / "paired").iterdir():
        (paired_only / "paired" / f.name).write_bytes(f.read_bytes())
    cases.append((quick(paired_only, tmp_path / "f", "kto"), "needs the unpaired config"))
    cases.append((quick(paired_only, tmp_path / "g", "dpo"), "pass --model"))  # no manifest: base model unknown
    for cfg, expected in cases:
        with pytest.raises(UserError) as err:
            train(cfg)
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_cli_reports_user_error_with_exit_2(built, tmp_path, capsys):
    from prefsynth.cli import main

    rc = main(["train", "--data", str(built), "--mode", "kto", "--batch_size", "1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: KTO needs a per-device batch size of at least 2")
