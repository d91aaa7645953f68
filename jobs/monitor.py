"""spark-submit entry point: drift and health monitoring of the day, with alerts.
See `python jobs/monitor.py --help`."""

import sys

from mtl.cli.monitor import main

if __name__ == "__main__":
    sys.exit(main())
