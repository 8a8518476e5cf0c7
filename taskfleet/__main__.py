"""``python -m taskfleet`` is the ``taskfleet`` command."""

from taskfleet.cli import main

main()
