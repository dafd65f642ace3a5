"""The thin top layer: the ``moorage`` CLI (and, with the operator issue, kopf handlers).

It decodes requests, calls down into ``middleware``/``backups``/``sync`` and writes results.
"""
