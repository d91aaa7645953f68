"""``mtl-ingest``: raw behaviour logs -> the canonical ``events`` table."""

from __future__ import annotations

from typing import Optional

from mtl.cli.common import job_parser, run_job
from mtl.config import Config
from mtl.ingest.job import run_ingest, summarize


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser("mtl-ingest", "Ingest raw behaviour logs into the canonical events Delta table.")
    parser.add_argument("--input", help="file, folder or glob to read (default: ingest.input)")
    parser.add_argument("--format", dest="format_name", help="format preset from the config's formats section")
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        spark = build_spark(cfg.spark)
        result = run_ingest(spark, cfg, args.input, args.ds, args.format_name)
        return summarize(spark, cfg, result)

    return run_job(args, body)
