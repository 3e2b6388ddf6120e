# The README's commands. `make setup` once; then `make sweep`, `make test`, `make plots`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SWEEP  ?= sweeps/kaplan.toml
# `make sweep` writes your own records here, beside the shipped results/ it compares them with.
MINE   ?= my-results
NAME   := $(basename $(notdir $(SWEEP)))
EXTRAS ?= test

.PHONY: setup sweep smoke test test-all plots bench bench-efficiency clean

# The venv is (re)installed when pyproject.toml or the extras change; EXTRAS=test,ray adds Ray.
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

setup: $(STAMP)

sweep: setup            ## train sweeps/kaplan.toml (or SWEEP=...) into my-results/, fit it, compare with results/
	$(BIN)/scaling sweep $(SWEEP) --out $(MINE)/$(NAME)
	$(BIN)/scaling fit $(MINE)/$(NAME)
	@if [ -d results/$(NAME)/runs ]; then $(BIN)/scaling reproduce $(MINE)/$(NAME) results/$(NAME); fi

smoke: setup            ## three tiny runs, under a minute
	$(BIN)/scaling sweep sweeps/smoke.toml

test: setup             ## the fast test suite (what CI runs)
	$(BIN)/python -m pytest

test-all: setup         ## including tests marked slow
	$(BIN)/python -m pytest -m ''

plots: setup            ## regenerate every figure of every results/<sweep>/, then its report.html
	$(BIN)/python -m analysis.make_plots results
	$(BIN)/scaling report results

bench: setup            ## tokens/s and MFU on this machine
	$(BIN)/scaling bench

bench-efficiency: setup ## every sweep-efficiency benchmark (7-12 min): step speed, start-up, packing, branching, ETA
	PYTHON=$(BIN)/python bash benchmarks/efficiency.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache results/smoke $(MINE)
