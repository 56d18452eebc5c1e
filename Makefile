# The README's two commands are `make run` and `make test`; both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser redis run test check lint format bench bench-limits clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# `make bench` runs in a venv of its own, .venv-bench: its baselines' clients (LiteLLM and its
# ~30 dependencies, pinned in requirements-bench.lock) need other versions than the tests' pins.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
$(BENCH_STAMP): pyproject.toml requirements-bench.lock
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv
	$(BENCH_VENV)/bin/uv pip install --quiet --compile-bytecode --python $(BENCH_VENV)/bin/python -r requirements-bench.lock
	$(BENCH_VENV)/bin/uv pip install --quiet --compile-bytecode --python $(BENCH_VENV)/bin/python --no-deps -e .
	touch $(BENCH_STAMP)

run: install
	$(BIN)/batchrun jobs/eval.yaml

# The report's browser test needs Debian's chromium; without it (not root, no apt) it is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "make: chromium could not be installed; the browser test will be skipped"; }

# The Redis budget store's tests need a redis-server binary; without it they are skipped.
redis:
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) || \
	  echo "make: redis-server could not be installed; the Redis store tests will be skipped"; }

test: install browser redis
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff format --check batchrun tests bench
	$(BIN)/ruff check batchrun tests bench
	$(BIN)/mypy

check: lint test

# The benchmarks against the simulator on loopback: prints one table (~25 minutes on 2 cores).
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench

format: install
	$(BIN)/ruff format batchrun tests bench
	$(BIN)/ruff check --fix batchrun tests bench

# Regenerate the pinned versions after changing dependencies in pyproject.toml.
lock: install
	$(BIN)/uv pip compile pyproject.toml --extra dev --quiet -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --quiet -o requirements-bench.lock

# Achieved rates against client- and server-side limits, one and two processes (~3 minutes).
bench-limits: install
	$(BIN)/python -m bench.limits

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
