# Front door: `make run` (main job) and `make test` (tests). Both bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= cifar10
CONFIG ?= configs/seed.yaml
OUT    ?= runs/main
ARGS   ?=

.PHONY: install run run-seed test bench clean

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes or the venv is missing.
# torch/torchvision are pinned to the releases on this machine's disk (a bare `torch` would pull a CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

run: install
	$(VENV)/bin/crlf run --config $(CONFIG) --data $(DATA) --out $(OUT) $(ARGS)

run-seed: install
	$(VENV)/bin/crlf run --config configs/seed.yaml --data $(DATA) --out runs/seed $(ARGS)

test: install
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: install
	$(PY) bench/eval_speed.py $(ARGS)
	$(PY) bench/throughput.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
