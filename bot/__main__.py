"""``python -m bot`` is the ``keyturn`` command."""

import sys

from bot.cli import main

sys.exit(main())
