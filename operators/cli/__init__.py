"""The ``moorage`` CLI: typer commands over the local runtime, and over a cluster through its API only.

Beside the operator, not inside it: against Kubernetes the CLI writes specs and request annotations
and follows the status (``operations``), reads what it needs through the shared ``operators.kube``,
and never imports the operator's handlers (an import-linter contract says so). ``app`` holds the
top-level commands; ``backup_commands``, ``sync_commands`` and ``operator_command`` their groups.
"""

from __future__ import annotations


def main() -> None:
    """The ``moorage`` entry point. Imported lazily: ``python -m operators.cli.operator_command`` (the
    operator's container) then loads only what running the operator needs."""
    from operators.cli.app import main as run

    run()
