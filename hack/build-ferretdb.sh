#!/usr/bin/env bash
# Build FerretDB (a MongoDB-compatible server) from its Go module and cache the binary by version,
# for the MongoDB dump/load tests in tests/integration/test_mongodb_dump_ferretdb.py.
#
# No registry ships a mongod here; FerretDB with its SQLite handler speaks the MongoDB wire protocol
# over a local directory, which is enough for the CRUD/dump/load data paths (not for replica sets).
# A scratch module (outside the repo) `go get -tool`s the command (resolving and checking every
# module through the Go module proxy), then the FerretDB module is built with its version file.
#
# Output: $MOORAGE_FERRETDB_CACHE/<version>/ferretdb (default cache: ~/.cache/moorage/ferretdb).
#         Idempotent: exits at once if the cached binary is there and runs.
# Cost:   ~3-8 min cold on 2 cores (niced, one package at a time); the Go caches are kept.
#
# Environment:
#   MOORAGE_FERRETDB_CACHE  cache root (default ~/.cache/moorage/ferretdb)
#   FERRETDB_VERSION        default v1.24.2
#   MOORAGE_BUILD_JOBS      go build -p (default 1: leave the other core to other work)
#   FORCE=1                 rebuild even if the cached binary runs
set -euo pipefail

FERRETDB_VERSION="${FERRETDB_VERSION:-v1.24.2}"
CACHE_ROOT="${MOORAGE_FERRETDB_CACHE:-${HOME}/.cache/moorage/ferretdb}"
DEST="${CACHE_ROOT}/${FERRETDB_VERSION}"
JOBS="${MOORAGE_BUILD_JOBS:-1}"
MODULE="github.com/FerretDB/FerretDB"

log() { printf '[build-ferretdb %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[build-ferretdb] ERROR: %s\n' "$*" >&2; exit 1; }

cached_ok() { [[ -x "${DEST}/ferretdb" ]] && "${DEST}/ferretdb" --version >/dev/null 2>&1; }

if [[ "${FORCE:-0}" != 1 ]] && cached_ok; then
  log "cached ferretdb in ${DEST} runs; nothing to do (FORCE=1 rebuilds)"
  exit 0
fi

command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && PATH="${PATH}:/usr/local/go/bin"; }
command -v go >/dev/null || die "go is not on PATH (a Go toolchain >= 1.22 is needed)"
log "go: $(go version)"
log "ferretdb ${FERRETDB_VERSION} -> ${DEST}"

export GOFLAGS="-buildvcs=false -p=${JOBS}"
# The SQLite handler uses a pure-Go SQLite: no C toolchain needed.
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GO111MODULE=on
NICE=(nice -n 19)
if command -v ionice >/dev/null; then NICE=(ionice -c3 nice -n 19); fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moorage-ferretdb-build.XXXXXX")"
trap 'chmod -R u+w "${WORK}" 2>/dev/null; rm -rf "${WORK}"' EXIT
cd "${WORK}"
go mod init moorage.local/ferretdb >/dev/null 2>&1

t0=$(date +%s)
log "[1/2] go get -tool ${MODULE}/cmd/ferretdb@${FERRETDB_VERSION}"
if ! go get -tool "${MODULE}/cmd/ferretdb@${FERRETDB_VERSION}" >"${WORK}/get.log" 2>&1; then
  tail -n 30 "${WORK}/get.log" >&2
  die "go get ${MODULE}/cmd/ferretdb@${FERRETDB_VERSION} failed (see above; 'not found'/'410 Gone' is the proxy refusing a module)"
fi

# `go install` of the tool would build a binary that panics at start: FerretDB embeds
# build/version/version.txt, which its release process generates and the module zip lacks. So the
# module (already in the module cache from the step above, checked against go.sum) is copied to the
# scratch dir, given that file, and built there as its own main module with its own go.sum.
SRC_DIR="$(go list -m -f '{{.Dir}}' "${MODULE}")"
[[ -d "${SRC_DIR}" ]] || die "go list gave no module directory for ${MODULE}"
cp -r "${SRC_DIR}" "${WORK}/src"
chmod -R u+w "${WORK}/src"
printf '%s\n' "${FERRETDB_VERSION}" >"${WORK}/src/build/version/version.txt"
log "[2/2] go build ${MODULE}/cmd/ferretdb (niced, -p=${JOBS})"
if ! (cd "${WORK}/src" && "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "${WORK}/bin/ferretdb" ./cmd/ferretdb) \
  >"${WORK}/build.log" 2>&1; then
  tail -n 40 "${WORK}/build.log" >&2
  die "go build ${MODULE}/cmd/ferretdb failed (see above)"
fi
"${WORK}/bin/ferretdb" --version >/dev/null 2>&1 || die "built ferretdb does not run --version"

mkdir -p "${DEST}"
install -m 0755 "${WORK}/bin/ferretdb" "${DEST}/ferretdb.new"
mv -f "${DEST}/ferretdb.new" "${DEST}/ferretdb"
cached_ok || die "installed ferretdb in ${DEST} does not run"
log "done in $(($(date +%s) - t0))s: ${DEST}/ferretdb ($(du -h "${DEST}/ferretdb" | cut -f1))"
