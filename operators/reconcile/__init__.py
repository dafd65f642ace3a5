"""The operator's reconcile steps, one module per operation, called by the thin kopf handlers in
``operators.main``: decode → validate → delegate → write status."""
