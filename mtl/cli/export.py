"""``mtl-export``: a registered version's ONNX graphs (float and int8), stored with the version."""

from __future__ import annotations

from typing import Optional

from mtl.cli.common import job_parser, run_job
from mtl.config import Config
from mtl.export.job import run_export, summarize


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        "export",
        "Export a registered model version as ONNX graphs (user tower, item tower, ranking heads; raw hashes "
        "and raw dense values in, dynamic batch size) plus signature.json, and their int8 variant; check them "
        "against the torch model and store them under onnx/ and onnx_int8/ of the version's MLflow run, "
        "where scoring.runtime: onnx | onnx_int8 finds them.",
    )
    parser.add_argument("--version", help="registered version to export (default: the champion)")
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        result = run_export(cfg, args.version)
        steps = "; ".join(f"{step} {seconds:.1f}s" for step, seconds in result.seconds.items())
        return f"{summarize(result)}\n{steps}"

    return run_job(args, body)
