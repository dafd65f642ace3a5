#!/usr/bin/env bash
# Install Debian's Prometheus exporters for the local runtime (docs/monitoring.md): the Redis one
# (prometheus-redis-exporter) and the PostgreSQL one (prometheus-postgres-exporter). Only their
# binaries are taken out of the .debs: installing the packages would also start their system
# services, listening on every interface with no target configured. The images install the
# packages themselves (hack/build-images.sh), where no service starts. Also ZooKeeper's own
# Prometheus provider (its jars, hack/zookeeper-metrics-jars.sh), which the local members load.
#
# Output: $MOORAGE_EXPORTER_DIR (default /opt/moorage/exporters)/bin/prometheus-*-exporter and
# .../share/zookeeper-metrics/*.jar, where middleware/engines/base.py exporter_dirs() looks first.
# Idempotent: what is in place is left alone. Cost: ~5 s (+~20 s for the jars the first time).
set -euo pipefail
DIR=${MOORAGE_EXPORTER_DIR:-/opt/moorage/exporters}
PACKAGES=(prometheus-redis-exporter prometheus-postgres-exporter)
log() { echo "[install-exporters $(date +%H:%M:%S)] $*" >&2; }

SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
jars=$("$(dirname "${BASH_SOURCE[0]}")/zookeeper-metrics-jars.sh")
if ! diff -rq "$jars" "$DIR/share/zookeeper-metrics" >/dev/null 2>&1; then
  $SUDO mkdir -p "$DIR/share"
  $SUDO rm -rf "$DIR/share/.zookeeper-metrics.tmp"
  $SUDO cp -r "$jars" "$DIR/share/.zookeeper-metrics.tmp"
  $SUDO chmod -R a+rX "$DIR/share/.zookeeper-metrics.tmp"
  $SUDO rm -rf "$DIR/share/zookeeper-metrics"
  $SUDO mv "$DIR/share/.zookeeper-metrics.tmp" "$DIR/share/zookeeper-metrics"
  log "ZooKeeper's Prometheus provider jars installed in $DIR/share/zookeeper-metrics"
fi

runs() { "$DIR/bin/$1" --version >/dev/null 2>&1; }
missing=()
for package in "${PACKAGES[@]}"; do runs "$package" || missing+=("$package"); done
if [ ${#missing[@]} -eq 0 ]; then
  log "${PACKAGES[*]} in $DIR/bin run; nothing to do"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's _apt user writes the downloads here
cd "$work"
apt-get download "${missing[@]}" >/dev/null 2>&1 || {
  $SUDO apt-get update -qq
  apt-get download "${missing[@]}" >/dev/null
}
$SUDO mkdir -p "$DIR/bin"
for package in "${missing[@]}"; do
  deb=$(ls "$work"/"$package"_*.deb)
  dpkg-deb -x "$deb" "$work/root"
  # Into place whole: a half-copied binary would fail the check above and be copied again.
  $SUDO install -m 0755 "$work/root/usr/bin/$package" "$DIR/bin/.$package.tmp"
  $SUDO mv "$DIR/bin/.$package.tmp" "$DIR/bin/$package"
  log "$package $(dpkg-deb -f "$deb" Version) installed in $DIR/bin"
done
