"""Both configs, as `datasets` loads them from the output folder, go into TRL's trainers unchanged."""

from __future__ import annotations

import math

import datasets
import pytest
from test_pipeline import tiny_cfg

from prefsynth.pipeline import run


@pytest.fixture(scope="module")
def dataset_dir(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trl")
    return run(tiny_cfg(tiny_model, tmp, n=16, formats="both")).out


@pytest.mark.parametrize("mode", ["dpo", "kto"])
def test_trainer_accepts_the_dataset_as_it_is(mode, dataset_dir, tiny_model, tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ds = datasets.load_dataset(dataset_dir, "paired" if mode == "dpo" else "unpaired")["train"]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM")
    common = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=5e-4,
                  bf16=False, use_cpu=True, report_to=[], logging_steps=1, max_length=1024, save_strategy="no")
    if mode == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(**common), train_dataset=ds,
                             processing_class=tok, peft_config=lora)
    else:
        from trl import KTOConfig, KTOTrainer

        trainer = KTOTrainer(model=model, ref_model=None, args=KTOConfig(**common), train_dataset=ds,
                             processing_class=tok, peft_config=lora)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
