"""Backups to S3 and reversible restore (built on the engine protocol; see docs/architecture.md)."""
