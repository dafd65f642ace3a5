#!/usr/bin/env bash
# Build a real Kubernetes control plane and node (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, etcd) from Go modules and cache the binaries by version, for
# the tests in tests/k8s and tests/e2e and for `make cluster-up`.
#
# Nothing ships a kube-apiserver binary here, so it is compiled from the k8s.io/kubernetes Go module:
# a scratch module (outside the repo) requires k8s.io/kubernetes and replaces every staging module
# (`k8s.io/<name> => ./staging/src/k8s.io/<name>` in its go.mod) with the published
# `k8s.io/<name> v0.<minor>.<patch>`. etcd comes from go.etcd.io/etcd/server/v3 the same way.
#
# Output: $MOORAGE_K8S_CACHE/<k8s version>/{kube-apiserver,kube-controller-manager,kube-scheduler,
#         kubelet,kube-proxy,etcd}
#         (default cache: ~/.cache/moorage/k8s). Idempotent: exits at once if they are there and run.
# Cost:   ~20-40 min and 3-4 GB RAM cold on 2 cores (it builds niced, one package at a time);
#         the Go module and build caches (GOPATH/GOCACHE) are kept, so a rebuild is much faster.
#
# Environment:
#   MOORAGE_K8S_CACHE     cache root (default ~/.cache/moorage/k8s)
#   K8S_VERSION           default v1.36.3 (staging modules are v0.<minor>.<patch>)
#   ETCD_VERSION          default v3.6.16
#   MOORAGE_BUILD_JOBS    go build -p (default 2; 1 leaves a core to other work)
#   MOORAGE_BUILD_KEEP=1  keep the scratch build dir (printed) instead of removing it
#   FORCE=1               rebuild even if the cached binaries run
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE_ROOT="${MOORAGE_K8S_CACHE:-${HOME}/.cache/moorage/k8s}"
DEST="${CACHE_ROOT}/${K8S_VERSION}"
JOBS="${MOORAGE_BUILD_JOBS:-2}"
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
BINARIES=("${K8S_COMMANDS[@]}" etcd)

log() { printf '[build-control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[build-control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

# k8s.io/kubernetes vX.Y.Z <-> staging modules v0.Y.Z
[[ "${K8S_VERSION}" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "K8S_VERSION must look like v1.36.3 (got ${K8S_VERSION})"
K8S_MINOR="${BASH_REMATCH[1]}"
STAGING_VERSION="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

cached_ok() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "${DEST}/${b}" ]] || return 1
    "${DEST}/${b}" --version >/dev/null 2>&1 || return 1
  done
}

if [[ "${FORCE:-0}" != 1 ]] && cached_ok; then
  log "cached control plane in ${DEST} runs; nothing to do (FORCE=1 rebuilds)"
  for b in "${BINARIES[@]}"; do log "  ${b}: $("${DEST}/${b}" --version 2>&1 | head -n1)"; done
  exit 0
fi

command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && PATH="${PATH}:/usr/local/go/bin"; }
command -v go >/dev/null || die "go is not on PATH (a Go toolchain >= 1.24 is needed)"
log "go: $(go version)"
log "kubernetes ${K8S_VERSION} (staging ${STAGING_VERSION}), etcd ${ETCD_VERSION} -> ${DEST}"

# Low priority, low parallelism: this machine is shared with other work.
export GOFLAGS="-buildvcs=false -p=${JOBS}"
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GO111MODULE=on
NICE=(nice -n 19)
if command -v ionice >/dev/null; then NICE=(ionice -c3 nice -n 19); fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moorage-k8s-build.XXXXXX")"
cleanup() {
  if [[ "${MOORAGE_BUILD_KEEP:-0}" == 1 ]]; then log "kept scratch dir ${WORK}"; else rm -rf "${WORK}"; fi
}
trap cleanup EXIT
log "scratch dir ${WORK}"

# go mod download -json MODULE@VERSION -> path of its go.mod; dies with the proxy's own words.
download_gomod() {
  local mod="$1" out
  out="$(go mod download -json "${mod}" 2>&1)" || true
  local err
  err="$(printf '%s' "${out}" | sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p')"
  if [[ -n "${err}" ]] || ! printf '%s' "${out}" | grep -q '"GoMod"'; then
    die "the Go module proxy did not serve ${mod}: $(printf '%b' "${err:-${out}}")
  (GOPROXY=$(go env GOPROXY)). Check the version exists and the proxy is reachable; a refusal is final."
  fi
  printf '%s' "${out}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p'
}

STAMP_START=$(date +%s)
mkdir -p "${WORK}/bin"

# ---------------------------------------------------------------- kubernetes
log "[1/4] resolving k8s.io/kubernetes@${K8S_VERSION} from the Go module proxy"
K8S_GOMOD="$(download_gomod "k8s.io/kubernetes@${K8S_VERSION}")"
[[ -f "${K8S_GOMOD}" ]] || die "go mod download gave no go.mod for k8s.io/kubernetes@${K8S_VERSION}"

mkdir -p "${WORK}/k8s"
cd "${WORK}/k8s"
go mod init moorage.local/k8s-control-plane >/dev/null 2>&1
# Every `k8s.io/X => ./staging/src/k8s.io/X` becomes `k8s.io/X => k8s.io/X <staging version>`.
mapfile -t STAGING < <(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._/-]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "${K8S_GOMOD}" | sort -u)
((${#STAGING[@]} > 10)) || die "found only ${#STAGING[@]} staging replaces in ${K8S_GOMOD}; the recipe does not fit this version"
log "      ${#STAGING[@]} staging modules -> ${STAGING_VERSION}"
{
  echo
  echo "replace ("
  for m in "${STAGING[@]}"; do echo "	${m} => ${m} ${STAGING_VERSION}"; done
  echo ")"
} >>go.mod
# The recipe covers staging replaces only; say so if upstream ever adds others.
OTHER_REPLACES="$(grep -E '=>' "${K8S_GOMOD}" | grep -vE '=>[[:space:]]*\./staging/' || true)"
[[ -z "${OTHER_REPLACES}" ]] || log "      warning: k8s.io/kubernetes go.mod has other replaces, not applied: ${OTHER_REPLACES}"

log "[2/4] go get ${K8S_COMMANDS[*]} (downloads ~300 modules the first time)"
TOOLS=()
for cmd in "${K8S_COMMANDS[@]}"; do TOOLS+=("k8s.io/kubernetes/cmd/${cmd}@${K8S_VERSION}"); done
if ! go get -tool "${TOOLS[@]}" >"${WORK}/k8s-get.log" 2>&1; then
  tail -n 30 "${WORK}/k8s-get.log" >&2
  die "go get of k8s.io/kubernetes@${K8S_VERSION} failed (see above; a 'not found'/'410 Gone' is the proxy refusing a module)"
fi
log "      go.mod resolved ($(grep -c '^	' go.mod) lines)"

# Version stamps as the upstream Makefile sets them (otherwise --version says v0.0.0-master).
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${K8S_MINOR}"
  LDFLAGS+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${BUILD_DATE}"
done

# One `go build` for every command: the packages they share compile once.
log "[3/4] go build ${K8S_COMMANDS[*]} (niced, -p=${JOBS}; the slow part: ~15-25 min cold)"
t0=$(date +%s)
PKGS=()
for cmd in "${K8S_COMMANDS[@]}"; do PKGS+=("k8s.io/kubernetes/cmd/${cmd}"); done
if ! "${NICE[@]}" go build -trimpath -ldflags "${LDFLAGS}" -o "${WORK}/bin/" "${PKGS[@]}" \
  >"${WORK}/k8s-build.log" 2>&1; then
  tail -n 40 "${WORK}/k8s-build.log" >&2
  die "go build ${K8S_COMMANDS[*]} failed (see above)"
fi
for cmd in "${K8S_COMMANDS[@]}"; do
  log "      ${cmd}: $("${WORK}/bin/${cmd}" --version 2>&1 | head -n1)"
done
log "      built in $(($(date +%s) - t0))s"

# ---------------------------------------------------------------- etcd
log "[4/4] etcd: go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
download_gomod "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >/dev/null
mkdir -p "${WORK}/etcd"
cd "${WORK}/etcd"
go mod init moorage.local/etcd >/dev/null 2>&1
if ! go get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >"${WORK}/etcd-get.log" 2>&1; then
  tail -n 30 "${WORK}/etcd-get.log" >&2
  die "go get go.etcd.io/etcd/server/v3@${ETCD_VERSION} failed (see above)"
fi
t0=$(date +%s)
if ! "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "${WORK}/bin/etcd" go.etcd.io/etcd/server/v3 \
  >"${WORK}/etcd-build.log" 2>&1; then
  tail -n 40 "${WORK}/etcd-build.log" >&2
  die "go build etcd failed (see above)"
fi
log "      etcd built in $(($(date +%s) - t0))s: $("${WORK}/bin/etcd" --version 2>&1 | head -n1)"

# ---------------------------------------------------------------- install
mkdir -p "${DEST}"
for b in "${BINARIES[@]}"; do
  "${WORK}/bin/${b}" --version >/dev/null 2>&1 || die "built ${b} does not run --version"
  install -m 0755 "${WORK}/bin/${b}" "${DEST}/${b}.new"
  mv -f "${DEST}/${b}.new" "${DEST}/${b}"
done
{
  echo "kubernetes ${K8S_VERSION}"
  echo "etcd ${ETCD_VERSION}"
  echo "go $(go env GOVERSION)"
  echo "built ${BUILD_DATE}"
} >"${DEST}/VERSIONS"
cached_ok || die "installed binaries in ${DEST} do not run"
log "done in $(($(date +%s) - STAMP_START))s; installed into ${DEST}:"
for b in "${BINARIES[@]}"; do log "  $(du -h "${DEST}/${b}" | cut -f1)  ${b}"; done
