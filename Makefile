# The README's two commands: `make run` and `make test`. Each sets up what is
# missing (a .venv, Debian's rabbitmq-server) and starts the RabbitMQ it needs itself:
# `make run` a private node under .rabbitmq/ when none answers at AIFI_AMQP_URL, stopped
# again by the same process however it ends (Ctrl-C, SIGTERM, a closed terminal);
# `make test` a throwaway node of the test session's own, on free ports.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AIFI_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
RABBIT_DIR := .rabbitmq
# The 25 slowest steps are listed at the end: where the suite's time goes.
PYTEST_ARGS ?= -q --durations=25
# The fast loop needs the .venv alone: no RabbitMQ, PostgreSQL or Node.js, no fault, fuzz
# or load suite (markers in pyproject.toml; tests/conftest.py fails a test of this tier
# that starts a node or a Node.js validator without its marker).
FAST_MARKERS := not broker and not postgresql and not nodejs and not slow and not cluster and not compose

.PHONY: test-setup test-tools lock debootstrap standins docker wrk prometheus fuse3 netfaults test-alerts run test test-fast test-cluster bench tail spool lint rabbitmq-server postgresql broker broker-stop clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The AsyncAPI and OpenAPI command-line validators the tests run (pinned in package-lock.json).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# requirements.lock, the image's dependency tree (every version and file hash fixed), from
# pyproject.toml's runtime dependencies and PyPI alone, this machine's pip settings aside.
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest release the ranges allow.
LOCK_ARGS ?=
lock: $(VENV)/.installed
	env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	  $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links --index-url https://pypi.org/simple \
	  --output-file requirements.lock $(LOCK_ARGS) pyproject.toml

# Debian's debootstrap, with which devtools/standins.py builds images no registry serves here.
debootstrap:
	command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }

# The images the Dockerfile and docker-compose.yml name, in the Docker engine at DOCKER_HOST:
# pulled, or else stand-ins built from Debian's packages under the same names.
standins: $(VENV)/.installed debootstrap
	$(PY) -m devtools.standins

rabbitmq-server: $(VENV)/.installed
	$(PY) -m devtools.rabbitnode install

# Debian's PostgreSQL for the ledger tests and the benchmark, which start a private node
# (initdb + pg_ctl in a temporary directory) when none answers at TEST_POSTGRES_URL.
postgresql: $(VENV)/.installed
	$(PY) -m devtools.pgnode install

# A node for manual use, left running until `make broker-stop`; `broker-stop` leaves
# alone a node that a running `make run` or `make bench` owns.
broker: rabbitmq-server
	$(PY) -m devtools.rabbitnode ensure --url "$(AIFI_AMQP_URL)" --dir $(RABBIT_DIR)

broker-stop: $(VENV)/.installed
	$(PY) -m devtools.rabbitnode stop --dir $(RABBIT_DIR)

# The stack starts (and stops) its broker itself: a recipe line after it would not run
# when make is killed by the SIGHUP of a closed terminal.
run: $(VENV)/.installed
	AIFI_AMQP_URL="$(AIFI_AMQP_URL)" $(PY) -m devtools.stack --rabbit-dir $(RABBIT_DIR)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The suite starts private nodes of its own (tests/conftest.py) and never uses the broker
# of a running `make run`. It measures the branch coverage of the product packages, the
# processes the tests start included, and fails under the floor in pyproject.toml. Its
# files run on TEST_PROCESSES pytest-xdist workers, a file on one worker (so a module's
# fixtures start once), the longest files first (tests/conftest.py): most of a test's time
# is spent waiting on a broker, a container or a fault, so more workers than cores pay off.
TEST_PROCESSES ?= 3
test: test-setup
	$(VENV)/bin/pytest $(PYTEST_ARGS) -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder \
	  -m "not cluster and not alerts" --cov --cov-report=term:skip-covered

# npm unpacks the validators (1.5 GB) while the .venv, the linters and Debian's packages
# are set up, one after the other (apt takes one install at a time).
test-setup:
	$(MAKE) --no-print-directory -j2 test-tools node_modules/.installed

test-tools:
	$(MAKE) --no-print-directory -j1 lint rabbitmq-server postgresql prometheus netfaults fuse3 docker

# The alert rules live (tests/test_alerts_live.py): RabbitMQ stopped and started, a worker
# killed, under the shipped `for:` durations; minutes long, so not in `make test`. -rP prints
# the measured times from each fault to its alerts firing.
test-alerts: rabbitmq-server prometheus
	$(VENV)/bin/pytest $(PYTEST_ARGS) -rP -m alerts

test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest $(PYTEST_ARGS) -m "$(FAST_MARKERS)"

test-cluster: rabbitmq-server netfaults
	$(VENV)/bin/pytest $(PYTEST_ARGS) tests/test_cluster.py

# What the cluster tests cut links with: network namespaces, veth pairs and a bridge (ip),
# and packet drops (iptables). They run as root, as `make test` does on a fresh machine.
netfaults:
	command -v ip >/dev/null && command -v iptables >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq iproute2 iptables; }

# The power-cut and failing-disk tests mount a FUSE file system of their own
# (tests/support/lazyfs.py): Debian's fuse3 brings fusermount3 and libfuse3.
fuse3:
	command -v fusermount3 >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse3; }

# What the compose tests need (tests/test_compose_live.py): Debian's Docker engine and the
# Python docker-compose; debootstrap for the stand-in images, ip and iptables for the
# engine's network namespace.
DOCKER_TOOLS := dockerd docker docker-compose
docker: debootstrap netfaults
	(for tool in $(DOCKER_TOOLS); do command -v $$tool || exit 1; done) >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq docker.io docker-compose; }

# The load generator of `make bench` (Debian's wrk); without it the bench falls back to
# an aiohttp client, whose own cost narrows the gaps between servers.
wrk:
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

# Debian's Prometheus: promtool for the rule tests, the server for the dashboard and alert tests.
prometheus:
	command -v prometheus >/dev/null || { apt-get update -qq && apt-get install -y -qq prometheus; }

bench: rabbitmq-server postgresql wrk
	AIFI_AMQP_URL="$(AIFI_AMQP_URL)" $(PY) -m devtools.rabbitnode with \
	  --url "$(AIFI_AMQP_URL)" --dir $(RABBIT_DIR) -- $(PY) -m bench

tail: $(VENV)/.installed
	$(VENV)/bin/aifi-gateway tail

spool: $(VENV)/.installed
	$(VENV)/bin/aifi-gateway spool

clean:
	rm -rf $(VENV) $(RABBIT_DIR) data build *.egg-info .coverage .coverage.*
