"""Moorage core: spec models, catalog, per-engine handlers, manifest builders and runtimes.

This package never imports ``backups``, ``sync`` or ``operators`` (enforced by import-linter).
"""

__version__ = "0.1.0"
