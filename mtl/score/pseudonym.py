"""Keyed pseudonyms for user ids in the published tables: HMAC-SHA256, the key from an
environment variable only, so it is never in a config file, a log line or the run record."""

from __future__ import annotations

import hashlib
import hmac
import os

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F

from mtl.config import ScoringConfig
from mtl.errors import JobError


def pseudonym_key(cfg: ScoringConfig) -> bytes:
    """The key from the configured environment variable; a clear error when it is unset or empty."""
    key = os.environ.get(cfg.pseudonym_key_env, "")
    if not key:
        raise JobError(
            f"scoring.pseudonymize is on but the environment variable {cfg.pseudonym_key_env} "
            "(scoring.pseudonym_key_env) is unset or empty: set it to the secret key"
        )
    return key.encode()


def pseudonym(key: bytes, user_id: str) -> str:
    """Hex HMAC-SHA256 of the id: stable for a key, not reversible or linkable without it."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


def pseudonymised(col: Column, key: bytes) -> Column:
    """``col`` (a user id column) replaced by its pseudonym; null stays null."""

    @F.pandas_udf("string")
    def hashed(ids: pd.Series) -> pd.Series:
        return ids.map(lambda u: None if u is None else pseudonym(key, u))

    return hashed(col)
