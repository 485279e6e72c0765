"""Generating and judging through a running vLLM server (`prefsynth engine`, `--engine URL`): a real
OpenAI-compatible vLLM server on loopback, started the way `make engine` starts it, serving the tiny model."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from prefsynth.config import from_dict
from prefsynth.engines import LightTokenizer, Request, ServerBackend, VLLMBackend, get_backend, served_name
from prefsynth.errors import UserError
from prefsynth.generate import GenerateConfig, request_seed
from prefsynth.model import ModelRef, resolve_model
from prefsynth.pipeline import PipelineConfig, run
from tiny_model import LOOSE_FILTERS, ONE_CANDIDATE, JUDGE_ALL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine_url(tiny_model, tmp_path_factory, free_port):
    """`make engine` (scripts/engine.sh) with the tiny model on a free port, state under a temporary folder;
    `make engine-stop` afterwards must leave no engine process behind."""
    state = tmp_path_factory.mktemp("engine-state")
    port = free_port()
    env = {**os.environ, "PREFSYNTH_STATE": str(state), "ENGINE_PORT": str(port), "MODEL": str(tiny_model),
           "ENGINE_ARGS": "--kv_cache_gib 1 --max_model_len 512 --max_num_seqs 16"}
    script = str(ROOT / "scripts" / "engine.sh")
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=300)
    pid = int((state / "run" / "engine.pid").read_text()) if (state / "run" / "engine.pid").exists() else None
    try:
        assert started.returncode == 0, started.stdout + started.stderr + (state / "logs" / "engine.log").read_text()
        assert f"--engine http://127.0.0.1:{port}" in started.stdout
        yield f"http://127.0.0.1:{port}"
    finally:
        stopped = subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=60)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)  # only if stop failed: then the assertion below says so
                leftover = True
            except ProcessLookupError:
                leftover = False
            assert stopped.returncode == 0 and not leftover, stopped.stdout + stopped.stderr


@pytest.mark.integration
def test_server_judges_like_the_in_process_engine(tiny_model, vllm_cfg, engine_url):
    """Same weights, same engine settings: the label log-probabilities read over HTTP match the in-process engine's,
    which also checks that the client renders and tokenizes prompts the same way."""
    model = resolve_model(str(tiny_model))
    local = get_backend(model, vllm_cfg())
    remote = get_backend(model, vllm_cfg(engine_url=engine_url))
    assert isinstance(local, VLLMBackend) and isinstance(remote, ServerBackend)
    # the client's own tokenizer (no transformers/torch import) passed its check against the server's rendering
    assert isinstance(remote.tokenizer, LightTokenizer)
    prompts = [local.chat("is this review negative or positive?"), local.chat("a longer prompt " * 7)]
    assert [remote.chat("is this review negative or positive?"), remote.chat("a longer prompt " * 7)] == prompts
    ids = [5, 17, 42, 100]
    a, b = dict(local.label_logprobs(prompts, ids)), dict(remote.label_logprobs(prompts, ids))
    assert sorted(a) == sorted(b) == [0, 1]
    for i in (0, 1):
        for x, y in zip(a[i], b[i], strict=True):
            assert math.isfinite(x) and abs(x - y) < 2e-3
    reqs = [Request(f"k{i}", remote.chat(f"title {i}"), request_seed(f"k{i}")) for i in range(6)]
    outs = list(remote.generate(reqs))
    assert sorted(o.key for o in outs) == sorted(r.key for r in reqs)
    assert all(1 <= o.completion_tokens <= 8 and o.finish_reason in ("stop", "length") for o in outs)
    assert all(o.prompt_tokens == len(remote.tokenizer(r.prompt)["input_ids"]) for o, r in
               zip(sorted(outs, key=lambda o: o.key), sorted(reqs, key=lambda r: r.key)))


@pytest.mark.integration
def test_build_through_the_engine_shares_the_cache_with_in_process_runs(tiny_model, tmp_path, engine_url):
    def cfg(**generate) -> PipelineConfig:
        return from_dict(PipelineConfig, {
            "collect": {"n": 6},
            "generate": {**ONE_CANDIDATE, "model": str(tiny_model), "max_tokens": 8, "kv_cache_gib": 1, "max_model_len": 512,
                         "cache_dir": str(tmp_path / "cache"), **generate},
            "build": {"out": str(tmp_path / "out"), "formats": "both", **LOOSE_FILTERS},
            "judge": JUDGE_ALL,
        })

    first = run(cfg(engine_url=engine_url))
    assert first.stats["generate"]["generated"] == 12 and first.stats["judge"]["judged"] == 12
    manifest = json.loads((tmp_path / "out" / "prefsynth.json").read_text())
    provenance = manifest["configs"]["paired"]["provenance"]
    assert provenance["backend"] == "vllm-server" and provenance["dtype"] == "float32"  # as the server reported
    # The cache key names model weights, templates and sampling, not the engine: an in-process rerun reuses all.
    again = run(cfg(backend="vllm"))
    assert again.stats["generate"]["generated"] == 0 and again.stats["judge"]["judged"] == 0
    assert again.changed is False


@pytest.mark.integration
def test_engine_serving_other_weights_is_refused(tiny_model, engine_url):
    real = resolve_model(str(tiny_model))
    other = ModelRef(real.name, real.path, "0" * 64)  # same folder name, other weights
    with pytest.raises(UserError, match=r"serves .*not .*@0000000000000000:<dtype>"):
        ServerBackend(other, GenerateConfig(model=str(tiny_model), engine_url=engine_url))
    assert served_name(real, "float32") in httpx.get(f"{engine_url}/v1/models").text


def test_unreachable_engine_is_one_line_and_writes_nothing(tiny_model, tmp_path, free_port):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prefsynth", "build", "--n", "2", "--model", str(tiny_model), "--out", str(out),
           "--cache", str(tmp_path / "cache"), "--engine", f"http://127.0.0.1:{free_port()}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no vLLM engine answering at http://127.0.0.1:")
    assert "Traceback" not in proc.stderr and not out.exists()


def test_data_and_tensor_parallel_sizes_pass_straight_to_the_vllm_server(tiny_model):
    """Several GPUs on one machine (not runnable here): the sizes reach `vllm serve` as its own flags; the
    in-process engine refuses data parallelism (vLLM's LLM class needs a process per replica) in one line."""
    from prefsynth.engines.vllm_server import engine_command

    cfg = GenerateConfig(model=str(tiny_model), data_parallel_size=4, tensor_parallel_size=2)
    argv, _ = engine_command(resolve_model(cfg.model), cfg, "127.0.0.1", 8765)
    assert argv[argv.index("--data-parallel-size") + 1] == "4"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    default, _ = engine_command(resolve_model(cfg.model), GenerateConfig(model=str(tiny_model)), "127.0.0.1", 8765)
    assert "--data-parallel-size" not in default
    with pytest.raises(UserError, match="data_parallel_size > 1 needs the engine server"):
        VLLMBackend(resolve_model(cfg.model), cfg)
