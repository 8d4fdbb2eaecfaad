"""``python -m app.cli``: the same as the ``memctl`` command."""

from app.cli import main

main()
