"""Fixtures shared by more than one tier.

The S3 server (SeaweedFS) is session-scoped and holds a machine-wide lock (its ports are fixed): it
must be defined once for the whole session, here, or a second definition in another tier's
conftest would wait forever for the lock the first one holds until the session ends.
"""

from tests.integration.s3_harness import cutting_proxy, s3_config, s3_server  # noqa: F401  (fixtures)
