"""``python -m rtbci.bench``: the same as ``rtbci bench``."""

import sys

from rtbci.bench.main import main

sys.exit(main())
