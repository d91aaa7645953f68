"""spark-submit entry point: data-quality checks of the day's output tables.
See `python jobs/check_outputs.py --help`."""

import sys

from mtl.cli.check_outputs import main

if __name__ == "__main__":
    sys.exit(main())
