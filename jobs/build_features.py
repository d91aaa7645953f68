"""spark-submit entry point: events -> feature tables and training examples.
See `python jobs/build_features.py --help`."""

import sys

from mtl.cli.build_features import main

if __name__ == "__main__":
    sys.exit(main())
