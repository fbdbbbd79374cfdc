# jaxbert: two commands on a fresh machine (Python 3.11, no GPU).
#   make run    fine-tune the real all-MiniLM-L6-v2 on rotten_tomatoes (the main job, 3-10 min on 2 cores)
#   make test   the whole test suite (what CI runs)
# Both create .venv and install the project with its test extras on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= runs/rotten_tomatoes_minilm

.PHONY: venv run test bench clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m experiments.launch \
	    --config experiments/configs/finetune_classification.py:rotten_tomatoes \
	    --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -rA --durations=25 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
