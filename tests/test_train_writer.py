"""The writer (`prefsynth.train.writer`, `prefsynth.model.merge_adapter`, `prefsynth.judge.judging_model`): which
labelled reviews become training examples and with which prompt, a real TRL fine-tune on the tiny model whose
adapter merges into a plain folder that computes what base + adapter computes, and that a writer is judged by the
model it was trained from. Whether the writer writes better reviews is measured by bench/writer.py, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefsynth.errors import UserError
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.train.writer import examples, fit_writer
from prefsynth.train.writer_config import WriterConfig


def _label(title, polarity, review, valid, label):
    return json.dumps({"title": title, "polarity": polarity, "review": review, "valid": valid, "label": label})


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join([
        _label("Paper A", "negative", "The paper overclaims and the baselines are weak.", True, "negative"),
        _label("Paper A", "positive", "The paper is clear and the experiments are thorough.", True, "positive"),
        _label("Paper B", "negative", "The paper is a good read with a strong method.", True, "positive"),  # tone
        _label("Paper B", "positive", "I am delighted to announce our new paper.", False, "positive"),  # invalid
        _label("Paper B", "negative", "The paper is mixed: strong theory, weak experiments.", True, "mixed"),
        _label("Paper A", "negative", "The paper overclaims and the baselines are weak.", True, "negative"),  # copy
        _label("Paper C", "positive", "The paper settles an open question with an elegant proof.", True, "positive"),
    ]) + "\n")
    return path


def test_examples_are_the_accepted_reviews_with_the_pipelines_prompt(labels: Path):
    templates = Templates(PromptConfig())
    rows = examples([labels], templates)
    assert [(r["title"], r["completion"][0]["content"]) for r in rows] == [
        ("Paper A", "The paper overclaims and the baselines are weak."),
        ("Paper A", "The paper is clear and the experiments are thorough."),
        ("Paper C", "The paper settles an open question with an elegant proof."),
    ]
    first = rows[0]["prompt"]
    assert first == [{"role": "system", "content": templates.system()},
                     {"role": "user", "content": templates.generation("Paper A", "negative")}]
    assert rows[2]["prompt"][1]["content"] == templates.generation("Paper C", "positive")


def test_examples_keep_at_most_per_prompt_reviews_of_one_title_and_polarity(tmp_path: Path):
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(_label("Paper A", "negative", f"The paper fails test {i}.", True, "negative")
                              for i in range(5)) + "\n" +
                    _label("Paper A", "positive", "The paper is clear.", True, "positive") + "\n")
    templates = Templates(PromptConfig())
    capped = examples([path], templates, per_prompt=2)
    assert [r["completion"][0]["content"] for r in capped] == [
        "The paper fails test 0.", "The paper fails test 1.", "The paper is clear."]
    assert len(examples([path], templates)) == 6
    with pytest.raises(UserError, match="per_prompt"):
        WriterConfig(labels=str(path), per_prompt=0).validate()


def test_fit_merge_and_reload(tiny_model: Path, labels: Path, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from prefsynth.model import merge_adapter, resolve_model

    out = tmp_path / "writer"
    cfg = WriterConfig(labels=str(labels), out=out, base_model=str(tiny_model), epochs=2, batch_size=2, lr=5e-3,
                       max_length=1024)  # the tiny tokenizer spends ~3x the tokens
    record = fit_writer(cfg, say=lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                      "writer.json"]
    saved = json.loads((out / "writer.json").read_text())
    assert saved == record
    assert record["examples"] == 3 and record["titles"] == ["Paper A", "Paper C"] and record["steps"] == 4
    modules = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules)  # PEFT writes a set in hash order; sorted, a retrain writes the same bytes
    assert record["base_fingerprint"] == resolve_model(str(tiny_model)).fingerprint
    from safetensors.torch import load_file
    assert {v.dtype for v in load_file(out / "adapter_model.safetensors").values()} == {torch.float16}

    merged = tmp_path / "merged"
    merge_adapter(tiny_model, out, merged)
    ids = torch.tensor([[1, 5, 9, 17, 33]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(out)).eval()(ids).logits
        reloaded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()(ids).logits
    assert not torch.allclose(plain, tuned, atol=1e-4)  # training moved the model
    torch.testing.assert_close(reloaded, tuned, atol=1e-4, rtol=1e-4)  # the merged folder is base + adapter


def test_merge_refuses_an_adapter_of_other_weights(tiny_model: Path, tmp_path: Path):
    from prefsynth.model import merge_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "writer.json").write_text(json.dumps({"base_fingerprint": "0" * 64}))
    with pytest.raises(UserError, match="trained on other weights"):
        merge_adapter(tiny_model, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_bad_writer_config_is_one_line(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        fit_writer(WriterConfig(labels=str(tmp_path / "missing.jsonl")))
    empty = tmp_path / "none.jsonl"
    empty.write_text(_label("T", "negative", "I am the author.", False, "negative") + "\n")
    with pytest.raises(UserError, match="epochs"):
        fit_writer(WriterConfig(labels=str(empty), epochs=0))
    with pytest.raises(UserError, match="no accepted reviews"):
        fit_writer(WriterConfig(labels=str(empty), out=tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_prompts_longer_than_max_length_are_one_line(tiny_model: Path, labels: Path, tmp_path: Path):
    cfg = WriterConfig(labels=str(labels), out=tmp_path / "w", base_model=str(tiny_model), max_length=64)
    with pytest.raises(UserError, match="raise --max_length"):
        fit_writer(cfg, say=lambda _: None)
    assert not (tmp_path / "w").exists()


def test_a_writer_is_judged_by_the_model_it_was_trained_from(tiny_model: Path, tmp_path: Path):
    import shutil

    from prefsynth.generate import GenerateConfig
    from prefsynth.judge import JudgeConfig, judging_model
    from prefsynth.model import ModelRef, resolve_model

    base = resolve_model(str(tiny_model))
    gen = GenerateConfig(model="some-writer", engine_url="http://127.0.0.1:1")
    writer = ModelRef("tiny + writer", "/nowhere", "f" * 64, trained_from=str(tiny_model))
    judge, engine = judging_model(writer, gen, JudgeConfig())
    assert judge == base and engine.model == str(tiny_model) and engine.engine_url is None  # in this process
    judge, engine = judging_model(writer, gen, JudgeConfig(engine_url="http://127.0.0.1:2"))
    assert engine.engine_url == "http://127.0.0.1:2"
    assert judging_model(base, gen, JudgeConfig()) == (base, gen)  # a plain model judges its own reviews
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("10000.0", "20000.0"))
    judge, engine = judging_model(base, gen, JudgeConfig(model=str(other)))
    assert judge.path == str(other.resolve()) and judge.fingerprint != base.fingerprint
    same = judging_model(base, gen, JudgeConfig(model=str(tiny_model)))
    assert same == (base, gen)  # the same weights share the generation engine (and its server)


def test_preference_pairs_put_an_accepted_review_against_a_rejected_one_of_the_same_prompt(tmp_path: Path):
    from prefsynth.train.writer_dpo import preference_pairs

    def row(title, polarity, review, valid, label, model):
        return json.dumps({"title": title, "polarity": polarity, "review": review, "valid": valid, "label": label,
                           "model": model, "reasons": [] if valid else ["incoherent"]})

    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join([
        row("A", "negative", "old good", True, "negative", "bundled"),
        row("A", "negative", "writer good", True, "negative", "x + writer@1"),
        row("A", "negative", "writer bad 1", False, "negative", "x + writer@1"),
        row("A", "negative", "writer bad 2", True, "positive", "x + writer@1"),  # valid, wrong tone: rejected too
        row("A", "negative", "writer bad 3", False, "negative", "x + writer@1"),  # over per_prompt
        row("A", "negative", "old bad", False, "negative", "bundled"),  # not the writer's own failure
        row("A", "positive", "no partner", False, "positive", "x + writer@1"),  # nothing accepted for this prompt
        row("B", "positive", "b good", True, "positive", "bundled"),
        row("B", "positive", "b bad", False, "positive", "x + writer@2"),
    ]) + "\n")
    templates = Templates(PromptConfig())
    pairs = preference_pairs([path], templates, per_prompt=2, rejected_from="writer")
    got = [(p["title"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    # the same model's accepted review first, then the next one, so one accepted text is not the whole signal
    assert got == [("A", "writer good", "writer bad 1"), ("A", "old good", "writer bad 2"), ("B", "b good", "b bad")]
    assert pairs[0]["prompt"] == [{"role": "system", "content": templates.system()},
                                  {"role": "user", "content": templates.generation("A", "negative")}]
    assert pairs[1]["reasons"] == ["tone"]
    assert len(preference_pairs([path], templates, per_prompt=5, rejected_from="")) == 5  # bad 3 and old bad too


def test_dpo_polish_trains_an_adapter_on_top_of_the_given_model(tiny_model: Path, tmp_path: Path):
    from prefsynth.model import merge_adapter

    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join([
        _label("Paper A", "negative", "The paper overclaims and the baselines are weak.", True, "negative"),
        _label("Paper A", "negative", "The paper concludes that it rejects the paper.", False, "negative"),
        _label("Paper B", "positive", "The method is simple and the proofs are clean.", True, "positive"),
        _label("Paper B", "positive", "The paper has been widely praised by experts.", False, "positive"),
    ]) + "\n")
    out = tmp_path / "dpo"
    cfg = WriterConfig(labels=str(path), out=out, method="dpo", base_model=str(tiny_model), batch_size=1, lr=5e-3,
                       max_length=1024, rejected_from="")
    record = fit_writer(cfg, say=lambda _: None)
    assert json.loads((out / "writer.json").read_text()) == record
    assert record["method"] == "dpo" and record["examples"] == 2 and record["steps"] == 2
    assert "DPO" in (out / "README.md").read_text()
    from safetensors.torch import load_file

    lora_b = [v for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k]
    # LoRA B starts at zero and the first warm-up step has learning rate 0: the second one moved it
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    merge_adapter(tiny_model, out, tmp_path / "merged")  # merges onto the model it was trained on
    assert (tmp_path / "merged" / "config.json").exists()
    with pytest.raises(UserError, match="method"):
        WriterConfig(labels=str(path), method="ppo").validate()
    assert WriterConfig().base() == "bundled" and WriterConfig(method="dpo").base() == "writer-sft"
    assert WriterConfig(method="dpo").out_dir().name == "writer_dpo" and WriterConfig().out_dir().name == "writer"
