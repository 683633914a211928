# Everything a fresh machine needs: `make serve` and `make test` create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8601

.PHONY: serve test lint unit integration bench clean system-deps

$(BIN)/forwarding: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/forwarding
	$(BIN)/pip install -q -e '.[test]'
	touch $@

serve: $(BIN)/forwarding
	$(BIN)/forwarding serve --port $(PORT)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src benchmarks

# sshd for the bridge tests, installed with apt where we can (tests/system-deps.sh).
system-deps:
	@bash tests/system-deps.sh

test: lint system-deps
	$(BIN)/pytest -q

unit: $(VENV)/.test-deps
	$(BIN)/pytest -q tests/unit tests/property

integration: $(VENV)/.test-deps system-deps
	$(BIN)/pytest -q tests/integration

# The benchmark suite: tables into docs/performance.md, charts into docs/img/.
# socat and haproxy are the peers to beat; they are installed when they can be (root with apt).
bench: $(VENV)/.test-deps
	@command -v socat >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq socat >/dev/null) ; } || \
		echo "socat is not installed and cannot be: its columns will be missing"
	@command -v haproxy >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get install -y -qq haproxy >/dev/null || (apt-get update -qq && apt-get install -y -qq haproxy >/dev/null)) ; } || \
		echo "haproxy is not installed and cannot be: its columns will be missing"
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
