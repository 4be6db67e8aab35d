"""``python -m rtbci.bench``: the same as ``rtbci bench``, without the command-line package
(only ``rtbci/__main__.py`` imports ``rtbci.cli``)."""

import logging
import sys

from rtbci.bench.main import build_parser, run_args
from rtbci.errors import RtbciError


def main(argv: list[str] | None = None) -> int:
    """Run ``rtbci bench ARGV``; 2 and one ``rtbci: error:`` line for an RtbciError."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        return run_args(args)
    except RtbciError as exc:
        print(f"rtbci: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtbci: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # not when a worker process (spawn) imports it
    sys.exit(main())
