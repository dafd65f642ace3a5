"""Runtimes realize a rendered plan and answer: which members exist, where, and are they up."""

from middleware.runtime.base import Runtime
from middleware.runtime.local import LocalRuntime, default_state_dir

__all__ = ["LocalRuntime", "Runtime", "default_state_dir"]
