# Airlock: `make run` starts the proxy on its defaults, `make test` runs the whole suite.
# Both create .venv with Python 3.12+ and install the project into it first: `run` what
# running needs, `test` the test toolchain (clients, emulators, linters) too.

VENV   := .venv
PY     := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
STAMP  := $(VENV)/.installed
ARGS   ?=

# The first Python 3.12+ found: python3.13, python3.12, python3, then pyenv's installs.
PYTHON ?= $(shell for c in python3.13 python3.12 python3 \
            $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
            $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && { echo $$c; break; }; \
          done)

.PHONY: run test lint bench soak deps clean

$(PY):
	@if [ -z "$(PYTHON)" ]; then \
	  echo "airlock needs Python 3.12 or newer (3.13 preferred): install python3.13 (e.g. 'apt-get install python3.13' or 'pyenv install 3.13') and run make again" >&2; \
	  exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP) $(RUN_STAMP)

# Debian packages the tests drive: curl as a real client; iptables, iproute2 (ip) and
# util-linux (setpriv) and procps (sysctl) for the capture and isolation tests, which run only as root;
# nodejs for an upstream that reads JSON as Node does, and npm to install Node 24 (below); chromium
# and its driver for the approvals page, driven in a headless browser; kubectl as a real Kubernetes
# client.
DEBS := curl:curl iptables:iptables ip:iproute2 setpriv:util-linux sysctl:procps node:nodejs npm:npm chromium:chromium chromedriver:chromium-driver kubectl:kubernetes-client

# Node 24 for the test that its built-in fetch honours the proxy variables under `airlock exec`
# (NODE_USE_ENV_PROXY=1), whatever node the system has: the npm registry's node-linux-ARCH package
# ships the official binary. Into .node24/ (git ignores it); a failed install only skips that test.
NODE24_VERSION := 24.22.3
NODE24_ARCH := $(subst x86_64,x64,$(subst aarch64,arm64,$(shell uname -m)))
NODE24 := .node24/node_modules/node-linux-$(NODE24_ARCH)/bin/node

$(NODE24): | deps
	@npm install --prefix .node24 --no-save --no-audit --no-fund --silent node-linux-$(NODE24_ARCH)@$(NODE24_VERSION) \
	  || echo "Node $(NODE24_VERSION) could not be installed from the npm registry: its exec test will be skipped" >&2

deps:
	@missing=$$(for d in $(DEBS); do command -v $${d%%:*} >/dev/null || echo $${d#*:}; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  elif ! command -v curl >/dev/null; then \
	    echo "the tests need curl: install it (apt-get install curl)" >&2; exit 1; fi; fi

# The suite runs on every core (pytest-xdist): a module's tests on one worker, and the tests that
# change the host's network set-up one after another (tests/conftest.py). WORKERS=0 runs it all
# in one process, e.g. with pdb.
WORKERS ?= logical

WHERE := airlock is not on PATH: run it as $(VENV)/bin/airlock (or 'source $(VENV)/bin/activate' first)

run: $(RUN_STAMP)
	@echo "$(WHERE)" >&2
	$(VENV)/bin/airlock run $(ARGS)

test: $(STAMP) deps $(NODE24)
	@echo "$(WHERE)" >&2
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/overhead.py

soak: $(STAMP)
	$(PY) bench/soak.py $(ARGS)

clean:
	rm -rf $(VENV) .node24 airlock-data .pytest_cache .mypy_cache .ruff_cache
