"""``mtl-monitor``: drift and health of ds against its reference window, with alerts."""

from __future__ import annotations

from typing import Optional

from mtl.cli.common import job_parser, run_job
from mtl.config import Config
from mtl.monitor.job import JOB, run_monitor, summarize


def main(argv: Optional[list[str]] = None) -> int:
    parser = job_parser(
        JOB,
        "Monitor --ds: input drift (PSI of each dense feature and of the event mix), prediction drift, "
        "output health (users scored, catalogue coverage, new items, candidate sources) and model health "
        "(today's evaluation against its trailing mean), written to monitoring_metrics and judged by "
        "monitoring.thresholds. Breaches go to the webhook in $MTL_MONITOR_WEBHOOK_URL (monitoring.alert); "
        "exits 1 when a metric crosses a fail bound.",
        ds_required=True,
    )
    args = parser.parse_args(argv)

    def body(cfg: Config) -> str:
        from mtl.spark import build_spark

        return summarize(run_monitor(build_spark(cfg.spark), cfg, args.ds))

    return run_job(args, body)
