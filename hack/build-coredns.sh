#!/usr/bin/env bash
# Build CoreDNS from the Go module proxy and cache it by version, for the local cluster
# (`make cluster-up`, tests/e2e): it answers `cluster.local` for pods from the bridge gateway.
#
# Output: ${MOORAGE_COREDNS_CACHE:-~/.cache/moorage/coredns}/<version>/coredns
# Cost:   ~3 min cold on 2 cores (module downloads included); exits at once when cached.
# Environment: COREDNS_VERSION (default v1.15.0), MOORAGE_BUILD_JOBS (go build -p, default 2),
#              FORCE=1 rebuilds.
set -euo pipefail

COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
DEST="${MOORAGE_COREDNS_CACHE:-${HOME}/.cache/moorage/coredns}/${COREDNS_VERSION}"
log() { printf '[build-coredns %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[build-coredns] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ "${FORCE:-0}" != 1 ]] && "${DEST}/coredns" -version >/dev/null 2>&1; then
  log "cached ${DEST}/coredns runs: $("${DEST}/coredns" -version | head -n1)"
  exit 0
fi
command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && PATH="${PATH}:/usr/local/go/bin"; }
command -v go >/dev/null || die "go is not on PATH"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moorage-coredns.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
export GOBIN="${WORK}/bin" GOFLAGS="-buildvcs=false -p=${MOORAGE_BUILD_JOBS:-2}" CGO_ENABLED=0 \
  GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
NICE=(nice -n 19)
command -v ionice >/dev/null && NICE=(ionice -c3 nice -n 19)
t0=$(date +%s)
log "go install github.com/coredns/coredns@${COREDNS_VERSION}"
if ! "${NICE[@]}" go install -trimpath -ldflags '-s -w' "github.com/coredns/coredns@${COREDNS_VERSION}" \
  >"${WORK}/build.log" 2>&1; then
  tail -n 30 "${WORK}/build.log" >&2
  die "go install of coredns ${COREDNS_VERSION} failed (see above)"
fi
mkdir -p "${DEST}"
install -m 0755 "${WORK}/bin/coredns" "${DEST}/coredns.new"
mv -f "${DEST}/coredns.new" "${DEST}/coredns"
log "built in $(($(date +%s) - t0))s: $("${DEST}/coredns" -version | head -n1) -> ${DEST}/coredns"
