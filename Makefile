# Front door: `make run` (main job) and `make test` (tests). Both bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A separate environment for the benchmarks' third-party baseline (Lightly SSL), never imported by crlf.
BENCH_VENV  := .venv-lightly
BENCH_STAMP := $(BENCH_VENV)/.installed
DATA   ?= cifar10
# The fast CPU recipe by default; the CIFAR-stem GPU recipe where an NVIDIA GPU answers nvidia-smi.
GPU    := $(shell nvidia-smi -L 2>/dev/null)
CONFIG ?= $(if $(GPU),configs/cifar-gpu.yaml,configs/fast-cpu.yaml)
# On a CPU the main job is planned to 20 minutes of pretraining (crlf --budget); BUDGET= turns it off.
BUDGET ?= $(if $(GPU),,20)
OUT    ?= runs/main
ARGS   ?=

.PHONY: install bench-env run run-seed test test-other-cpus bench bench-budget clean

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes or the venv is missing.
# torch/torchvision are pinned to the releases on this machine's disk (a bare `torch` would pull a CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,demo,export,plots]'
	touch $(STAMP)

bench-env: $(BENCH_STAMP)

$(BENCH_STAMP):
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 lightly==1.6.0 kornia==0.9.0 pyyaml
	touch $(BENCH_STAMP)

run: install
	$(VENV)/bin/crlf run --config $(CONFIG) --data $(DATA) --out $(OUT) $(if $(BUDGET),--budget $(BUDGET)) $(ARGS)

run-seed: install
	$(VENV)/bin/crlf run --config configs/seed.yaml --data $(DATA) --out runs/seed $(ARGS)

test: install
	$(PY) -m pytest -m "not slow" $(ARGS)

# The same suite under the kernels of other CPUs: oneDNN and ATen dispatch by instruction set, and each
# set rounds differently (other summation orders). SSE4.1 on one thread stands for a CPU unlike this one
# (an older x86, and the order of sums an ARM or Apple-silicon build takes); where this CPU has AVX-512,
# AVX2 stands for the many that lack it. A test that passes only with this machine's rounding fails here.
OTHER_CPUS := "ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1"
OTHER_CPUS += $(if $(shell grep -m1 -o avx512f /proc/cpuinfo 2>/dev/null),"ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2")

test-other-cpus: install
	@failed=0; for kernels in $(OTHER_CPUS); do \
	  echo "== the suite under $$kernels"; \
	  env $$kernels $(PY) -m pytest -m "not slow" $(ARGS) || failed=$$?; \
	done; exit $$failed

bench: install bench-env
	$(PY) bench/eval_speed.py $(ARGS)
	$(PY) bench/throughput.py --lightly-python $(BENCH_VENV)/bin/python $(ARGS)

# The full fast-cpu run (~25 min on 2 CPU cores): wall time, linear and kNN top-1.
bench-budget: install
	$(PY) bench/budget.py $(ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .pytest_cache
