"""A test hook for fault injection: ``MTL_PAUSE_AT=<point>`` makes the process stop at that
point (after writing ``MTL_PAUSE_MARKER``, if set, so a test knows it got there) and wait to be
killed. Points: ``<job>:started`` (the run's pipeline_runs row is written), ``write:<table>``
(just before the commit of a write to that table), ``register:<model>`` (before a new model
version is created) and ``publish:<alias>`` (before the alias moves). Unset, it costs one dict
lookup and does nothing.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

PAUSE_ENV = "MTL_PAUSE_AT"
MARKER_ENV = "MTL_PAUSE_MARKER"


def pause_point(name: str) -> None:
    if os.environ.get(PAUSE_ENV) != name:
        return
    log.warning("%s=%s: pausing here until killed (pid %d)", PAUSE_ENV, name, os.getpid())
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(str(os.getpid()))
    while True:
        time.sleep(3600)
