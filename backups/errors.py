"""Errors of the backups layer. Every message names the bucket/key or backup involved, never a credential."""

from __future__ import annotations

from middleware.errors import MoorageError


class BackupError(MoorageError):
    """A backup or restore step failed in a way we can explain in one line."""


class StorageError(BackupError):
    """S3 could not be reached or refused a request after retries.

    ``operation`` is the S3 call (``UploadPart``, ``GetObject``...), ``code`` the S3 error code when
    the server answered (``NoSuchKey``, ``AccessDenied``), else the client-side error class.
    """

    def __init__(self, message: str, *, operation: str = "", code: str = "") -> None:
        self.operation = operation
        self.code = code
        super().__init__(message)


class ObjectNotFound(StorageError):
    """The key does not exist (S3 ``NoSuchKey`` / 404)."""


class ChecksumMismatch(BackupError):
    """An object's content does not match the size/sha256 its manifest recorded."""


class BackupNotFound(BackupError):
    """No backup (or restore record) by that id in the repository."""
