"""``python -m operators.cli``: the same as the ``moorage`` command."""

from operators.cli.app import main

main()
