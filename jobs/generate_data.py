"""spark-submit entry point: synthetic behaviour log with ground truth. See --help."""

import sys

from mtl.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
