"""Kubernetes access shared by the operator and the ``moorage`` CLI: one runtime per kubeconfig (and
per other cluster's kubeconfig Secret), custom resources decoded into resolved specs with the
cluster's catalogs, and the sides of a ``RedisSync`` resolved to addresses. The operator's handlers
(``operators.reconcile``) and the CLI (``operators.cli``) both build on it; it knows neither."""
