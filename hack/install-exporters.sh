#!/usr/bin/env bash
# Install Debian's Prometheus exporters for the local runtime (docs/monitoring.md): the Redis one
# (prometheus-redis-exporter) and the PostgreSQL one (prometheus-postgres-exporter). Only their
# binaries are taken out of the .debs: installing the packages would also start their system
# services, listening on every interface with no target configured. The images install the
# packages themselves (hack/build-images.sh), where no service starts.
#
# Output: $MOORAGE_EXPORTER_DIR (default /opt/moorage/exporters)/bin/prometheus-*-exporter, where
# middleware/engines/exporters.py looks first. Idempotent: exits at once when both run. Cost: ~5 s.
set -euo pipefail
DIR=${MOORAGE_EXPORTER_DIR:-/opt/moorage/exporters}
PACKAGES=(prometheus-redis-exporter prometheus-postgres-exporter)
log() { echo "[install-exporters $(date +%H:%M:%S)] $*" >&2; }

runs() { "$DIR/bin/$1" --version >/dev/null 2>&1; }
missing=()
for package in "${PACKAGES[@]}"; do runs "$package" || missing+=("$package"); done
if [ ${#missing[@]} -eq 0 ]; then
  log "${PACKAGES[*]} in $DIR/bin run; nothing to do"
  exit 0
fi
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
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
