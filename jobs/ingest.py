"""spark-submit entry point: raw logs -> events. See `python jobs/ingest.py --help`."""

import sys

from mtl.cli.ingest import main

if __name__ == "__main__":
    sys.exit(main())
