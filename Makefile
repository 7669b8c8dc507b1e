# Every target sets up .venv itself; a second run only re-installs when pyproject.toml changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekit-installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and alone: `torch==2.13.0` is the CPU build served on this project's machines;
# any other spec pulls gigabytes of CUDA packages.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,openvino,plots]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgekit demo

lint: $(STAMP)
	$(BIN)/ruff check edgekit tests bench
	$(BIN)/ruff format --check edgekit tests bench

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/int8_speed.py
	$(BIN)/python bench/runner_overhead.py

clean:
	rm -rf $(VENV) build .pytest_cache
