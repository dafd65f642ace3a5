#!/usr/bin/env bash
# ZooKeeper's Prometheus metrics provider for Debian's ZooKeeper 3.8 (docs/monitoring.md): Debian
# packages the server without it, so its jar and the Prometheus client jars it needs come from Maven
# Central, pinned by version and sha256 (checked on every call). Its Jetty endpoint also needs the
# servlet API, which Debian's libservlet-api-java has (zookeeper's own Jetty depends on it).
#
#   hack/zookeeper-metrics-jars.sh      # prints the directory holding the jars
#
# Cached in $MOORAGE_CACHE (default ~/.cache/moorage)/zookeeper-metrics/3.8.0: fetched once (with
# Maven's dependency plugin, ~20 s), then only checked. Used by hack/install-exporters.sh (the local
# runtime) and hack/build-images.sh (the zookeeper image).
set -euo pipefail
VERSION=3.8.0
CACHE=${MOORAGE_CACHE:-$HOME/.cache/moorage}/zookeeper-metrics/$VERSION
# The provider is built against simpleclient 0.9.0 (its pom's version).
JARS=(
  "org.apache.zookeeper:zookeeper-prometheus-metrics:$VERSION f86020b4e6d76c91d447535504611c2755cdf4352e4a422342183b9e877544f2"
  "io.prometheus:simpleclient:0.9.0 72d6dc49c023a4b3345d8a8a82d947ea24d07b1ad60cf57fee85a6f77b149a19"
  "io.prometheus:simpleclient_common:0.9.0 97d404dca184d2a07817ccae2ef1df9fb34b84526c44cf2367ef0ba8031759c0"
  "io.prometheus:simpleclient_hotspot:0.9.0 927fc7069f9a8ebd1a8420c3bb1675a957bd359b95e50664aa96e387d4b0a256"
  "io.prometheus:simpleclient_servlet:0.9.0 12cf7668b6f4941dbc8dac6dc270db0e579b216be0aee74a6ad98d7d6e8aa228"
)
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.6.1
log() { echo "[zookeeper-metrics-jars $(date +%H:%M:%S)] $*" >&2; }

jar_name() { local coordinate=$1; IFS=: read -r _ artifact version <<<"$coordinate"; echo "$artifact-$version.jar"; }
verified() { [ -f "$CACHE/$1" ] && [ "$(sha256sum "$CACHE/$1" | cut -d' ' -f1)" = "$2" ]; }

mkdir -p "$CACHE"
for entry in "${JARS[@]}"; do
  read -r coordinate sha <<<"$entry"
  name=$(jar_name "$coordinate")
  verified "$name" "$sha" && continue
  if ! command -v mvn >/dev/null; then
    log "mvn not found: install Maven (apt-get install maven) to fetch $coordinate"
    exit 1
  fi
  work=$(mktemp -d)
  if ! mvn -q -B "$DEPENDENCY_PLUGIN:copy" -Dartifact="$coordinate" -DoutputDirectory="$work" >"$work/mvn.log" 2>&1; then
    tail -20 "$work/mvn.log" >&2
    log "fetching $coordinate failed"
    rm -rf "$work"
    exit 1
  fi
  got=$(sha256sum "$work/$name" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    log "$name has sha256 $got, expected $sha: refused"
    rm -rf "$work"
    exit 1
  fi
  mv "$work/$name" "$CACHE/$name"
  rm -rf "$work"
  log "$name fetched into $CACHE"
done
echo "$CACHE"
