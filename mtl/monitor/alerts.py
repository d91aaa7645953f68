"""Sending the monitor's breaches to a webhook: JSON over HTTP POST, with a timeout and retries.

The URL comes from an environment variable only (it usually carries a token), so it is never in
a config file, a log line or an error message. No variable set: the breaches are logged only.
A webhook that fails or never answers costs at most (retries + 1) x timeout plus the backoff,
and never fails the job: the table and the log still hold every breach.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from mtl.config import AlertConfig
from mtl.monitor.metrics import Judged

log = logging.getLogger(__name__)

_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class Delivery:
    sent: bool
    attempts: int
    reason: str  # "sent", "no webhook configured", or the last error


def payload(ds: dt.date, run_id: str, judged: Sequence[Judged]) -> dict:
    worst = "fail" if any(j.severity == "fail" for j in judged) else "warn"
    return {
        "source": "mtl-monitor",
        "ds": ds.isoformat(),
        "run_id": run_id,
        "severity": worst,
        "summary": f"ds {ds}: {len(judged)} monitoring breach(es), worst {worst}",
        "breaches": [
            {
                "metric": j.measurement.metric,
                "subject": j.measurement.subject,
                "check_group": j.measurement.check_group,
                "severity": j.severity,
                "value": j.measurement.value,
                "breach": j.breach,
            }
            for j in judged
        ],
    }


def send(cfg: AlertConfig, body: dict) -> Delivery:
    """POST ``body`` as JSON to the URL in ``cfg.webhook_url_env``."""
    url = os.environ.get(cfg.webhook_url_env, "").strip()
    if not url:
        log.info("no alert sent: $%s is not set (breaches are logged and in monitoring_metrics)", cfg.webhook_url_env)
        return Delivery(False, 0, "no webhook configured")
    data = json.dumps(body).encode()
    reason = ""
    for attempt in range(1, cfg.retries + 2):
        request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout_seconds) as response:
                response.read()
            log.info("alert sent to the webhook in $%s (attempt %d)", cfg.webhook_url_env, attempt)
            return Delivery(True, attempt, "sent")
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            # The URL is not in the message: URLError's reason names the failure, not the address.
            reason = type(getattr(exc, "reason", exc)).__name__
        log.warning("alert webhook ($%s) attempt %d failed: %s", cfg.webhook_url_env, attempt, reason)
        if attempt <= cfg.retries:
            time.sleep(_BACKOFF_SECONDS * 2 ** (attempt - 1))
    return Delivery(False, cfg.retries + 1, reason)
