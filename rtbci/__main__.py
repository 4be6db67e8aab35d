import sys

from rtbci.cli import main

sys.exit(main())
