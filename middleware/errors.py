"""Errors every layer understands.

The operator maps ``SpecError`` to ``kopf.PermanentError`` (retrying cannot help) and ``NotReady``
to ``kopf.TemporaryError`` (try again later); the CLI prints any ``MoorageError`` as one line.
"""

from __future__ import annotations


class MoorageError(Exception):
    """Base class: a failure we can explain to the user in one line."""


class SpecError(MoorageError):
    """The user's spec is invalid. ``field`` is the dotted path of the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class NotReady(MoorageError):
    """Something is not there yet (pods not up, cluster still converging); retry later."""


class OperationError(MoorageError):
    """A live operation on an engine failed and could not be completed safely."""
