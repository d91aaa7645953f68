"""spark-submit entry point: the published model -> daily_recommendations and repurchase_predictions.
See `python jobs/score.py --help`."""

import sys

from mtl.cli.score import main

if __name__ == "__main__":
    sys.exit(main())
