"""A real S3 server the cluster's pods can reach, for the backup end-to-end tests.

SeaweedFS ``weed mini`` (``tests/integration/s3_harness.py`` starts it) bound to the host's
address on the pod bridge, 10.88.0.1, on free ports of its own, like the integration tests'
instance on 127.0.0.1, so both (and other test runs) can run at once.
Pods reach it at ``http://10.88.0.1:<port>`` (the host is their gateway); the tests reach it at the
same address. Random credentials, a temporary directory, stopped by its PID at the end of the
module.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from tests.integration.s3_harness import S3Server, start_seaweedfs, stop_seaweedfs, weed_binary

BRIDGE_HOST = "10.88.0.1"


@pytest.fixture(scope="module")
def pod_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on 10.88.0.1 (free ports) for one test module."""
    weed_binary()
    server, proc = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs-e2e"), host=BRIDGE_HOST)
    try:
        yield server
    finally:
        stop_seaweedfs(proc)


def s3_client(server: S3Server) -> object:
    """A boto3 S3 client on the server (what the tests check the repository with)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=30),
    )


def new_bucket(server: S3Server) -> str:
    name = "e2e-" + secrets.token_hex(6)
    s3_client(server).create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name
