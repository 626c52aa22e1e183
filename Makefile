# edgeproxy — two commands for a newcomer: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BASE_PACKAGES := python3-venv
APT_PACKAGES := $(BASE_PACKAGES) docker.io busybox-static nginx-light haproxy wrk nghttp2-client pebble certbot slowhttptest iproute2
ONCE ?=

.PHONY: demo test lint bench base-deps system-deps apt-install venv clean

$(STAMP): pyproject.toml | base-deps
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

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

demo: $(STAMP)
	$(PY) -m edgeproxy.demo $(if $(ONCE),--once,)

test: system-deps $(STAMP)
	$(PY) tests/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check edgeproxy switchctl certs tests bench
	$(VENV)/bin/ruff format --check edgeproxy switchctl certs tests bench
	$(VENV)/bin/mypy

bench: system-deps $(STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
