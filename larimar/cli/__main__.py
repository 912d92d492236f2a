"""``python -m larimar.cli``: the same as the ``larimar`` command."""

from larimar.cli import main

main()
