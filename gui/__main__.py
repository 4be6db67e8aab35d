"""``python -m rtbci.gui``: the display, without the ``rtbci`` command."""

import sys

from rtbci.gui.app import main

sys.exit(main())
