"""Cross-cluster Redis sync with supervised redis-shake workloads (see docs/architecture.md)."""
