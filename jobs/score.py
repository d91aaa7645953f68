"""spark-submit entry point: the published model -> daily_recommendations and repurchase_predictions. See `python jobs/score.py --help`."""

import sys

from mtl.score.job import main

if __name__ == "__main__":
    sys.exit(main())
