"""spark-submit entry point: the ONNX export of a registered model version.
See `python jobs/export.py --help`."""

import sys

from mtl.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
