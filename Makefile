# The README's two commands: `make run` and `make test`. Each sets up what is
# missing (a .venv, Debian's rabbitmq-server, a private RabbitMQ node under
# .rabbitmq/ when none answers at AIFI_AMQP_URL) and stops what it started.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AIFI_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
RABBIT_DIR := .rabbitmq
PYTEST_ARGS ?= -q
export AIFI_AMQP_URL

.PHONY: run test test-cluster bench tail spool lint broker broker-stop clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The AsyncAPI and OpenAPI command-line validators the tests run (pinned in package-lock.json).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

broker: $(VENV)/.installed
	$(PY) -m devtools.rabbitnode ensure --url "$(AIFI_AMQP_URL)" --dir $(RABBIT_DIR)

broker-stop: $(VENV)/.installed
	$(PY) -m devtools.rabbitnode stop --dir $(RABBIT_DIR)

run: broker
	$(PY) -m devtools.stack; status=$$?; $(MAKE) --no-print-directory broker-stop; exit $$status

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: broker node_modules/.installed
	status=0; \
	{ $(MAKE) --no-print-directory lint && \
	  $(VENV)/bin/pytest $(PYTEST_ARGS) -m "not cluster"; } || status=$$?; \
	$(MAKE) --no-print-directory broker-stop; exit $$status

test-cluster: $(VENV)/.installed
	$(VENV)/bin/pytest $(PYTEST_ARGS) -m cluster

bench: broker
	$(PY) -m bench; status=$$?; $(MAKE) --no-print-directory broker-stop; exit $$status

tail: $(VENV)/.installed
	$(VENV)/bin/aifi-gateway tail

spool: $(VENV)/.installed
	$(VENV)/bin/aifi-gateway spool

clean:
	rm -rf $(VENV) $(RABBIT_DIR) data build *.egg-info
