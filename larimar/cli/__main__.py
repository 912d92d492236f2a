"""``python -m larimar.cli``: the same as the ``larimar`` command."""

import sys

from larimar.cli import main

sys.exit(main())
