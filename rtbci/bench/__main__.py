"""``python -m rtbci.bench``: the same as ``rtbci bench``."""

import sys

from rtbci.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
