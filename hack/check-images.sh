#!/usr/bin/env bash
# Check that each local image (hack/build-images.sh) runs what Moorage's rendered pods run:
#
#   hack/check-images.sh [--keep] [NAME...]    # NAME: pause redis zookeeper postgresql redis-shake operator
#
# Builds what is not cached yet, unpacks each image and runs, without a kubelet, pod 0 of Moorage's
# own rendered StatefulSets (init container, server, readiness probe, a few execs) as their
# uid/gid, with a read-only root, the manifests' volumes and env, in fresh namespaces (unshare +
# chroot); redis-shake runs its rendered Deployment between two redis-servers; the operator image
# runs the CLI the operator Deployment and the backup/restore Jobs run. Details: hack/check_images.py.
# Exit status non-zero when any check fails. Needs root and the repo's .venv (`make setup`).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MOORAGE_VENV:-$REPO/.venv}
[ -x "$VENV/bin/python" ] || { echo "check-images: no virtualenv at $VENV: run make setup" >&2; exit 2; }
cd "$REPO"
exec nice -n 10 "$VENV/bin/python" "$REPO/hack/check_images.py" "$@"
