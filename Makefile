# One front door for set-up, the main job and the tests. Every target builds the
# virtual environment first, so a fresh clone needs nothing done by hand.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch is pinned exactly: an unpinned torch pulls a multi-GB CUDA build here.
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CONFIG  ?= configs/default.yaml

export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup train test test-all test-cluster bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

train: setup
	$(BIN)/distmeta train --config $(CONFIG) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

# The multi-node tests on a cluster in a box (nodes in their own network and mount namespaces):
# root and iproute2, tens of minutes on 2 cores. Installs iproute2 when it is missing.
test-cluster: setup
	command -v ip >/dev/null && command -v tc >/dev/null || (apt-get update -q && apt-get install -y -q iproute2)
	$(BIN)/python -m pytest -q -m cluster tests/clusterbox $(ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m "" $(ARGS)

bench: setup
	$(BIN)/python -m benchmarks.speed $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
