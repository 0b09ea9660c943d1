"""``python -m metrictransfer.cli``: the command line."""

import sys

from metrictransfer.cli import main

sys.exit(main())
