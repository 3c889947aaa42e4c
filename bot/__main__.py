"""``python -m keyturn`` is the ``keyturn`` command."""

import sys

from keyturn.cli import main

sys.exit(main())
