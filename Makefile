# Tongxin: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APP := appliance
STAMP := $(VENV)/.installed
PROTO := $(APP)/src/tongxin/proto

.PHONY: run test test-foreground lint unit integration proto setup clean bench tofu molecule ansible-lint data-volume bundle engines test-cold

# Debian's python3 lacks venv/pip until python3-venv is installed.
$(BIN)/python:
	@$(PY) -m venv --help >/dev/null 2>&1 && $(PY) -c 'import ensurepip' 2>/dev/null || \
	  { echo "installing python3-venv (needs root)"; apt-get update -qq && apt-get install -y -qq python3-venv; }
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python $(APP)/pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '$(APP)[dev]'
	@touch $@

$(PROTO)/tongxin_pb2.py: $(PROTO)/tongxin.proto $(PROTO)/internal.proto $(PROTO)/e2ee.proto $(STAMP)
	cd $(PROTO) && ../../../../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. tongxin.proto internal.proto e2ee.proto

setup: $(STAMP) $(PROTO)/tongxin_pb2.py web

proto: $(PROTO)/tongxin_pb2.py

## web: the web client (appliance/web) built into $(WEB_OUT), served at /
WEB := $(APP)/web
WEB_OUT := $(APP)/src/tongxin/web
.PHONY: web
web: $(WEB_OUT)/index.html

$(WEB)/node_modules/.installed: $(WEB)/package.json $(WEB)/package-lock.json
	@command -v npm >/dev/null || \
	  { echo "installing nodejs and npm (needs root)"; apt-get update -qq && apt-get install -y -qq nodejs npm; }
	cd $(WEB) && npm ci --no-audit --no-fund
	@touch $@

$(WEB_OUT)/index.html: $(WEB)/node_modules/.installed $(WEB)/build.mjs $(WEB)/index.html $(WEB)/style.css \
		$(wildcard $(WEB)/src/*.js) $(wildcard $(WEB)/src/*/*.js) $(wildcard $(WEB)/src/*/*/*.js) \
		$(wildcard $(WEB)/src/*/*.json) $(wildcard $(WEB)/src/*/*/*.json) \
		$(wildcard $(WEB)/src/console/*.html) $(wildcard $(WEB)/src/console/*.css) \
		$(PROTO)/tongxin.proto $(PROTO)/e2ee.proto
	cd $(WEB) && node build.mjs

## run: start one node on embedded defaults (SQLite, in-process queue) at 127.0.0.1:8080
run: setup
	$(BIN)/tongxin serve --allow-registration $(ARGS)

lint: setup
	cd $(APP) && ../$(BIN)/ruff check src tests bench
	cd $(APP) && ../$(BIN)/mypy

unit: setup
	cd $(APP) && ../$(BIN)/pytest -q tests/unit

integration: setup
	cd $(APP) && ../$(BIN)/pytest -q tests/integration

## tofu: fmt, validate and tofu test of every module and environment (builds tofu
## and the providers from Go modules on first use; cached under ~/.cache/tongxin)
tofu:
	bash terraform/test.sh

## molecule: converge, idempotence and verify of every Ansible role on podman
## test hosts, MOLECULE_JOBS (3) scenarios at a time, through Mitogen
## (tests/molecule/base.yml; docs/ansible.md). MOLECULE_SCENARIOS: which ones
## (empty: every one under tests/molecule/, including `site`, four hosts built
## by a real `tofu apply` that then runs playbooks/site.yml and sends a chat
## message through the load balancer, and `lab`, dc1, dc2 and dr).
MOLECULE_SCENARIOS ?=
MOLECULE_JOBS ?= 3
molecule:
	tests/molecule/run.sh -j $(MOLECULE_JOBS) $(MOLECULE_SCENARIOS)

ansible-lint:
	tests/molecule/run.sh --lint

## data-volume: the common role's data volume tasks (format if blank, mount
## by UUID, the refusals) against this machine on a loop device in a
## temporary directory, removed afterwards (root, losetup; about 25 s;
## tests/molecule/_data_volume/run.sh). Needs the venv ansible-lint makes.
data-volume:
	tests/molecule/_data_volume/run.sh

## engines: build or fetch every engine the tests start (Redis, Kafka, MariaDB
## from Debian and Maven Central; TiDB's tidb-server and MinIO built from their
## Go modules), once, into the cache, with progress, so that no test's timeout
## ever includes a build (a fresh machine spends several minutes here).
engines:
	bash $(APP)/scripts/services.sh install all
	bash $(APP)/scripts/s3server.sh install

## test: everything CI runs. First what the scenarios need: the venv and
## web client, Molecule's tools, podman and base image (`run.sh --setup site`:
## no other scenario's image), OpenTofu and its providers with `tofu test`.
## Then every Molecule scenario (all eighteen, multisite with its DR drills
## the longest) in the background, MOLECULE_JOBS_BESIDE (2) at a time,
## niced, while the rest runs in the foreground (test-foreground: Python
## lint, ansible-lint, the data volume tasks on a loop device, the engines,
## pytest; together they leave most of the two cores idle, and the longest
## scenario no longer waits for them), then MOLECULE_JOBS (3) at a time
## (docs/ansible.md, "Timings"). The scenarios' progress is shown when the
## foreground has ended.
MOLECULE_JOBS_BESIDE ?= 2
test: setup tofu
	tests/molecule/run.sh --setup site
	tests/molecule/run.sh -j $(MOLECULE_JOBS) --beside $(MOLECULE_JOBS_BESIDE) $(MOLECULE_SCENARIOS) -- \
	  $(MAKE) --no-print-directory test-foreground

test-foreground: lint ansible-lint data-volume engines
	@# the engines pytest started (Redis, Kafka, MariaDB, TiDB) are stopped
	@# when it ends: they would idle beside the scenarios, which are bound by CPU.
	@# --durations: the slowest tests in the log, to see where its time goes
	cd $(APP) && ../$(BIN)/pytest -q -p no:cacheprovider --durations=25 tests; rc=$$?; \
	  bash scripts/services.sh stop all; exit $$rc

## test-cold: `make test` as a fresh machine runs it: HOME, TONGXIN_CACHE,
## the Go module and build caches and npm's cache in an empty throwaway
## directory (removed afterwards), so every engine, tofu and the bundle are
## built and downloaded again. The checkout's .venv and podman's image store
## are kept. About an hour on two cores; `time make test-cold` to measure.
test-cold:
	@d=$$(mktemp -d /var/tmp/tongxin-cold.XXXXXX); \
	  trap 'chmod -R u+w "$$d" 2>/dev/null; rm -rf "$$d"' EXIT; \
	  echo "test-cold: caches in $$d"; \
	  HOME=$$d/home TONGXIN_CACHE=$$d/home/.cache/tongxin GOPATH=$$d/go GOMODCACHE=$$d/go/pkg/mod \
	  GOCACHE=$$d/go/cache npm_config_cache=$$d/npm PIP_NO_CACHE_DIR=1 $(MAKE) test

## bundle: the offline install bundle (wheels, Kafka, Debian packages; signed
## manifest) in $${TONGXIN_CACHE:-~/.cache/tongxin}/bundle; BUNDLE_COMPONENTS,
## BUNDLE_ARCHES, BUNDLE_PACKAGES, BUNDLE_TAR=1 (docs/operations.md). Needs
## `make setup` once (the signer is the checkout's tongxin); not a prerequisite,
## so that a build never reinstalls the venv under other users of it.
bundle:
	bash $(APP)/scripts/bundle.sh

bench: setup
	$(BIN)/python $(APP)/bench/relay_bench.py

clean:
	rm -rf $(VENV) var
