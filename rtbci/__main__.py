import sys

from rtbci.cli import main

if __name__ == "__main__":  # not when a decoder's worker process (spawn) imports it
    sys.exit(main())
