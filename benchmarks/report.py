"""What every benchmark prints: per-size medians, the machine and date, and the growth ratio."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from typing import Any


def size_result(rows: int, seconds: list[float], **facts: Any) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {**facts, "rows": rows, "seconds": seconds, "median_s": median, "rows_per_s": rows / median}


def print_summary(results: list[dict[str, Any]], **facts: Any) -> None:
    summary: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.machine()}",
        **facts,
        "results": results,
    }
    if len(results) >= 2:
        summary["time_ratio_largest_to_smallest"] = results[-1]["median_s"] / results[0]["median_s"]
        summary["rows_ratio"] = results[-1]["rows"] / results[0]["rows"]
    print(json.dumps(summary, indent=2))
