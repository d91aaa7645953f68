"""spark-submit entry point: a model version and its baselines on a held-out ds -> model_metrics and a report.
See `python jobs/evaluate.py --help`."""

import sys

from mtl.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
