"""``mtl-generate``: a synthetic behaviour log with ground truth."""

from __future__ import annotations

from typing import Optional

from mtl.cli.common import job_parser, run_job
from mtl.config import Config
from mtl.generate.job import run_generate


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser("mtl-generate", "Generate a synthetic behaviour log with ground truth.")
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        result = run_generate(build_spark(cfg.spark), cfg)
        return (
            f"generated {result.events:,} {result.format} log rows for {result.users:,} users and "
            f"{result.items:,} items in {result.seconds:.1f}s\n  output {result.output}"
        )

    return run_job(args, body)
