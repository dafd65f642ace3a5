#!/usr/bin/env bash
# Build redis-shake (the data mover of `moorage sync`) and cache the binary by version, for the local
# runtime (`moorage sync start --source --target`), the sync tests in tests/integration and the image
# of the Kubernetes workloads.
#
# Source, in this order:
#   1. $MOORAGE_REDIS_SHAKE_SRC when set: a redis-shake source tree (cmd/, internal/, go.mod), or the
#      word `upstream` to clone the tag even when a vendored tree is there;
#   2. ../shared/vendor/redis-shake-v4.2.0 next to this repository, when present (the unchanged v4.2.0
#      source; the module proxy refuses every RedisShake module path, see ../shared/vendor/README.md);
#   3. else a shallow git clone of the upstream tag (github.com/tair-opensource/RedisShake, tag
#      v4.2.0), for machines with internet access.
# The source is copied into a scratch dir first (the vendored one is read-only) and built there with
# `go build` (its module path is `RedisShake`, which is why `go install` cannot fetch it); the Go
# modules it needs come from the Go module proxy.
#
# Output: $MOORAGE_REDIS_SHAKE_CACHE/<version>/redis-shake (default cache: ~/.cache/moorage/redis-shake),
#         a static binary (CGO_ENABLED=0, -trimpath, -ldflags '-s -w'). The last line on stdout is its
#         path. Idempotent: exits at once if the cached binary is there and runs.
# Cost:   ~40 s cold on 2 cores (niced); the Go module and build caches are kept.
#
# Environment:
#   MOORAGE_REDIS_SHAKE_CACHE  cache root (default ~/.cache/moorage/redis-shake)
#   MOORAGE_REDIS_SHAKE_SRC    source tree to build instead of the vendored one, or `upstream`
#   REDIS_SHAKE_VERSION        default v4.2.0 (the version the vendored tree is; names the cache dir,
#                              where Moorage looks for v4.2.0 only: point $MOORAGE_REDIS_SHAKE at others;
#                              and the upstream tag)
#   REDIS_SHAKE_REPO           upstream git URL (default https://github.com/tair-opensource/RedisShake.git)
#   MOORAGE_BUILD_JOBS         go build -p (default 1: leave the other core to other work)
#   FORCE=1                    rebuild even if the cached binary runs
set -euo pipefail

REDIS_SHAKE_VERSION="${REDIS_SHAKE_VERSION:-v4.2.0}"
REDIS_SHAKE_REPO="${REDIS_SHAKE_REPO:-https://github.com/tair-opensource/RedisShake.git}"
CACHE_ROOT="${MOORAGE_REDIS_SHAKE_CACHE:-${HOME}/.cache/moorage/redis-shake}"
DEST="${CACHE_ROOT}/${REDIS_SHAKE_VERSION}"
BINARY="${DEST}/redis-shake"
JOBS="${MOORAGE_BUILD_JOBS:-1}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDORED="$(cd "${REPO_ROOT}/.." && pwd)/shared/vendor/redis-shake-${REDIS_SHAKE_VERSION}"

# Logs go to stderr: stdout carries only the binary's path, for `$(hack/build-redis-shake.sh)`.
log() { printf '[build-redis-shake %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[build-redis-shake] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "${REDIS_SHAKE_VERSION}" =~ ^v4\.[0-9]+\.[0-9]+$ ]] \
  || die "REDIS_SHAKE_VERSION must be a v4 release tag like v4.2.0 (got ${REDIS_SHAKE_VERSION}); Moorage renders v4 configs"

# redis-shake has no --version flag: run with no argument it prints "config file not found" and exits 1.
# "Runs" = a static executable that starts and says that (any other failure means a broken file).
cached_ok() {
  [[ -x "${BINARY}" ]] || return 1
  local out
  out="$("${BINARY}" 2>&1 </dev/null || true)"
  [[ "${out}" == *"config file not found"* ]]
}

if [[ "${FORCE:-0}" != 1 ]] && cached_ok; then
  log "cached redis-shake ${REDIS_SHAKE_VERSION} in ${DEST} runs; nothing to do (FORCE=1 rebuilds)"
  printf '%s\n' "${BINARY}"
  exit 0
fi

command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && PATH="${PATH}:/usr/local/go/bin"; }
command -v go >/dev/null || die "go is not on PATH (a Go toolchain >= 1.21 is needed)"
log "go: $(go version)"

export GOFLAGS="-buildvcs=false -p=${JOBS}"
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GO111MODULE=on
NICE=(nice -n 19)
if command -v ionice >/dev/null; then NICE=(ionice -c3 nice -n 19); fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moorage-redis-shake-build.XXXXXX")"
trap 'chmod -R u+w "${WORK}" 2>/dev/null; rm -rf "${WORK}"' EXIT
SRC="${WORK}/src"

t0=$(date +%s)
if [[ -n "${MOORAGE_REDIS_SHAKE_SRC:-}" && "${MOORAGE_REDIS_SHAKE_SRC}" != upstream ]]; then
  [[ -f "${MOORAGE_REDIS_SHAKE_SRC}/go.mod" && -d "${MOORAGE_REDIS_SHAKE_SRC}/cmd/redis-shake" ]] \
    || die "MOORAGE_REDIS_SHAKE_SRC=${MOORAGE_REDIS_SHAKE_SRC} is not a redis-shake source tree (no go.mod or cmd/redis-shake)"
  log "[1/2] source: ${MOORAGE_REDIS_SHAKE_SRC} (MOORAGE_REDIS_SHAKE_SRC), copied to ${SRC}"
  cp -r "${MOORAGE_REDIS_SHAKE_SRC}" "${SRC}"
elif [[ -z "${MOORAGE_REDIS_SHAKE_SRC:-}" && -d "${VENDORED}" ]]; then
  [[ -f "${VENDORED}/go.mod" && -d "${VENDORED}/cmd/redis-shake" ]] \
    || die "${VENDORED} is incomplete (no go.mod or cmd/redis-shake)"
  log "[1/2] source: vendored $(cd "${VENDORED}" && pwd), copied to ${SRC}"
  cp -r "${VENDORED}" "${SRC}"
else
  command -v git >/dev/null || die "no vendored source at ${VENDORED} and git is not installed to clone ${REDIS_SHAKE_REPO}"
  if [[ "${MOORAGE_REDIS_SHAKE_SRC:-}" == upstream ]]; then why="MOORAGE_REDIS_SHAKE_SRC=upstream"; else why="no vendored tree at ${VENDORED}"; fi
  log "[1/2] source: ${why}; cloning ${REDIS_SHAKE_REPO} at tag ${REDIS_SHAKE_VERSION}"
  if ! git -c advice.detachedHead=false clone --quiet --depth 1 --branch "${REDIS_SHAKE_VERSION}" \
    "${REDIS_SHAKE_REPO}" "${SRC}" >"${WORK}/clone.log" 2>&1; then
    tail -n 20 "${WORK}/clone.log" >&2
    die "git clone of ${REDIS_SHAKE_REPO} at ${REDIS_SHAKE_VERSION} failed (see above): no internet access? \
Put the source at ${VENDORED} or point MOORAGE_REDIS_SHAKE_SRC at it"
  fi
fi
chmod -R u+w "${SRC}"
[[ "$(sed -n 's/^module[[:space:]]*//p' "${SRC}/go.mod")" == RedisShake ]] \
  || die "${SRC}/go.mod is not module RedisShake: not a redis-shake v4 tree"

log "[2/2] go build ./cmd/redis-shake (niced, -p=${JOBS}; Go modules from $(go env GOPROXY))"
if ! (cd "${SRC}" && "${NICE[@]}" go build -trimpath -ldflags '-s -w' -o "${WORK}/redis-shake" ./cmd/redis-shake) \
  >"${WORK}/build.log" 2>&1; then
  tail -n 40 "${WORK}/build.log" >&2
  die "go build of redis-shake ${REDIS_SHAKE_VERSION} failed (see above; 'not found'/'410 Gone' is the module proxy refusing a dependency)"
fi

mkdir -p "${DEST}"
install -m 0755 "${WORK}/redis-shake" "${BINARY}.new"
mv -f "${BINARY}.new" "${BINARY}"
{
  echo "redis-shake ${REDIS_SHAKE_VERSION}"
  echo "go $(go env GOVERSION)"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"${DEST}/VERSION"
cached_ok || die "installed ${BINARY} does not run"
log "done in $(($(date +%s) - t0))s: ${BINARY} ($(du -h "${BINARY}" | cut -f1))"
printf '%s\n' "${BINARY}"
