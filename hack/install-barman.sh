#!/usr/bin/env bash
# Install barman's cloud tools (PostgreSQL WAL archiving, base backups and point-in-time restores to
# S3: backups/pitr.py) into their own virtualenv that the postgres OS user can run: PostgreSQL runs
# archive_command and restore_command as that user, and a virtualenv built on a Python under /root
# (pyenv) is out of its reach, so this one is built on Debian's /usr/bin/python3.
#
# Output: $MOORAGE_BARMAN_DIR (default /opt/moorage/barman-<version>)/bin/barman-cloud-*.
# Idempotent: exits at once when that version is there and runs. Cost: ~20 s (pip, from PyPI).
set -euo pipefail
VERSION=${BARMAN_VERSION:-3.19.1}
DIR=${MOORAGE_BARMAN_DIR:-/opt/moorage/barman-$VERSION}
log() { echo "[install-barman $(date +%H:%M:%S)] $*" >&2; }

# With the zstd and lz4 libraries its WAL compression needs (spec.backup.walCompression).
EXTRAS=cloud,zstandard,lz4
if [ "$("$DIR/bin/barman-cloud-wal-archive" --version 2>/dev/null)" = "barman-cloud-wal-archive $VERSION" ] &&
  "$DIR/bin/python" -c 'import zstandard, lz4.frame' 2>/dev/null; then
  log "barman $VERSION in $DIR runs (with zstd and lz4); nothing to do"
  exit 0
fi
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
PYTHON=/usr/bin/python3
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || {
  log "installing python3-venv (Debian) for $PYTHON"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
}
# Straight into place: a half-done install fails the version check above and is redone next time.
$SUDO rm -rf "$DIR"
$SUDO mkdir -p "$(dirname "$DIR")"
$SUDO "$PYTHON" -m venv "$DIR"
$SUDO "$DIR/bin/pip" install -q --disable-pip-version-check "barman[$EXTRAS]==$VERSION"
"$DIR/bin/python" -c 'import zstandard, lz4.frame'
$SUDO chmod -R o+rX "$DIR"
log "barman $VERSION installed in $DIR ($("$DIR/bin/barman-cloud-backup" --version))"
