"""spark-submit / horovodrun entry point: training_examples -> a new registered model version.
See `python jobs/train.py --help`."""

import sys

from mtl.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
