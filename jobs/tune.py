"""spark-submit entry point: an Optuna study of training runs -> the best model config (nothing
registered or published). See `python jobs/tune.py --help`."""

import sys

from mtl.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
