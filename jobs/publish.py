"""spark-submit entry point: the quality gate that publishes a model version (the champion alias).
See `python jobs/publish.py --help`."""

import sys

from mtl.cli.publish import main

if __name__ == "__main__":
    sys.exit(main())
