"""Where a model version was trained, read from its artifact: what evaluation needs to know about
training without importing the training stack."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Optional

from mtl.errors import InputError
from mtl.tables import TRAINING_EXAMPLES

RETRIEVAL_TWIN = "retrieval"


@dataclass(frozen=True)
class TrainingWindow:
    """Where a model version was trained, from its artifact's metadata (written by the train job)."""

    ds: dt.date
    mode: str
    train_from: dt.date
    train_to: dt.date
    val_ds: Optional[dt.date]
    table_version: Optional[int]
    best_epoch: Optional[int]

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], version: Optional[str]) -> TrainingWindow:
        missing = [k for k in ("ds", "train_ds_from", "train_ds_to") if not metadata.get(k)]
        if missing:
            raise InputError(
                f"model version {version} has no {', '.join(missing)} in its metadata: "
                "evaluation needs to know which days it was trained on"
            )
        day = dt.date.fromisoformat
        fit = metadata.get("fit") or {}
        return cls(
            ds=day(metadata["ds"]),
            mode=str(metadata.get("mode", "full")),
            train_from=day(metadata["train_ds_from"]),
            train_to=day(metadata["train_ds_to"]),
            val_ds=day(metadata["val_ds"]) if metadata.get("val_ds") else None,
            table_version=(metadata.get("tables_read") or {}).get(TRAINING_EXAMPLES.name),
            best_epoch=fit.get("best_epoch"),
        )

    @property
    def last_day_used(self) -> dt.date:
        return max(self.train_to, self.val_ds or self.train_to)
