"""Fixtures shared by more than one tier.

The S3 server (SeaweedFS, on ports chosen free) is session-scoped: it is defined once for the whole
session, here, so every tier shares one server instead of starting one per conftest.
"""

from tests.integration.s3_harness import cutting_proxy, s3_config, s3_server  # noqa: F401  (fixtures)
