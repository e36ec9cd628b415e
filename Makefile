# fraudstream — the README's two commands are `make demo` and `make test`; both install first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export FRAUDSTREAM_EMULATOR_DIR ?= $(CURDIR)/.emulators

.PHONY: install test test-fast chaos demo bench bench-gpu lint audit format emulators-up emulators-down emulators-status clean

$(VENV)/.installed: pyproject.toml uv.lock
	@test -x "$(UV)" || { $(PYTHON) -m venv .tools && .tools/bin/pip install -q "uv==$(UV_VERSION)"; }
	$(UV) sync --frozen --extra dev --python $(PYTHON) --compile-bytecode
	@touch $@

NODE_PRODUCER := tests/producers/node
$(NODE_PRODUCER)/node_modules/.package-lock.json: $(NODE_PRODUCER)/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix $(NODE_PRODUCER) --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Node.js producer test will be skipped"; fi

install: $(VENV)/.installed $(NODE_PRODUCER)/node_modules/.package-lock.json  ## .venv from the lock file (uv); the Node.js test producer (npm ci)

test: install  ## every test, the emulator ones included (they start and stop the emulators)
	$(BIN)/pytest

test-fast: install  ## the tests that need neither the emulators nor ../shared, and are not slow
	$(BIN)/pytest -m "not emulator and not reference and not slow"

chaos: install  ## fuzzed input, redelivery, model faults (also part of make test)
	$(BIN)/pytest -m chaos

demo: install  ## the engine end to end on the reference data, with a summary
	$(BIN)/fraudstream demo --json out/demo/summary.json

bench: install  ## benchmarks: bench/results/latest.json and latest.md
	$(BIN)/python -m bench.run

bench-gpu: install  ## XGBoost GPU vs CPU (train, inplace_predict by batch, SHAP): bench/results/gpu-latest.{json,md}; CPU figures only without a GPU
	$(BIN)/python -m bench.gpu

lint: install  ## ruff, then the dependency audit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory audit

audit: install  ## pip-audit of the locked dependencies (needs the package index's JSON API; --strict fails when it cannot check)
	$(UV) export --frozen --extra dev --no-emit-project --format requirements-txt -q -o $(VENV)/audit-requirements.txt
	$(BIN)/pip-audit --strict --progress-spinner off --require-hashes --disable-pip -r $(VENV)/audit-requirements.txt

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

emulators-up: install
	$(BIN)/fraudstream emulators up
emulators-down: install
	$(BIN)/fraudstream emulators down
emulators-status: install
	$(BIN)/fraudstream emulators status

clean:
	rm -rf $(VENV) .tools .numba_cache .pytest_cache .ruff_cache .hypothesis out
