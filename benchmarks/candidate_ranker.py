"""How well can the candidate rows be ordered? Recall@k per user over the held-out day's rows of
``row_kind = candidate`` in training_examples: each source's own score, a gradient-boosted tree
and a plain MLP trained on the earlier days' candidate rows (the same dense inputs the model
reads, log1p then standardised, no ids), and any registered versions' p_click.

The rows are the day's candidates with every positive and a hash-drawn share of the negatives,
so the recall is higher than over the whole pool; it compares orderings of the same rows. Run it
on a warehouse the daily chain has built up to --ds (e.g. by ``make demo``):

    .venv/bin/python benchmarks/candidate_ranker.py --conf conf/demo.yaml --ds 2024-03-15 --versions 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mtl import registry  # noqa: E402
from mtl.config import load_config  # noqa: E402
from mtl.data.batch import MODEL_FIELDS  # noqa: E402
from mtl.models.artifacts import load_model  # noqa: E402
from mtl.recommend.workers import model_batch  # noqa: E402
from mtl.schema import CANDIDATE_DENSE, dense_columns  # noqa: E402
from mtl.spark import build_spark  # noqa: E402
from mtl.tables import TRAINING_EXAMPLES  # noqa: E402


def recall_at(rows: pd.DataFrame, score: np.ndarray, k: int) -> float:
    """Mean over users with a positive of (positives in the user's top k by score) / positives."""
    ranked = rows[["user_id", "click"]].assign(score=score).sort_values(["user_id", "score"], ascending=[True, False])
    ranked["position"] = ranked.groupby("user_id").cumcount()
    positives = ranked.groupby("user_id")["click"].sum()
    positives = positives[positives > 0]
    hits = ranked[ranked["position"] < k].groupby("user_id")["click"].sum().reindex(positives.index).fillna(0)
    return float((hits / positives).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", required=True)
    parser.add_argument("--ds", required=True, type=dt.date.fromisoformat, help="the held-out day")
    parser.add_argument("--versions", nargs="*", default=[], help="registered versions to score")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.conf, ["spark.show_progress=false", "spark.log_level=ERROR", *args.overrides])
    spark = build_spark(cfg.spark)
    wanted = ["ds", "user_id", "click", *dict.fromkeys(f.name for f in MODEL_FIELDS if f.name != "user_id")]
    rows = (
        spark.read.format("delta")
        .load(TRAINING_EXAMPLES.path(cfg.storage))
        .where((F.col("row_kind") == "candidate") & (F.col("ds") <= F.lit(args.ds)))
        .select(*wanted)
        .toPandas()
    )
    dense = list(dense_columns())
    logged = np.log1p(rows[dense].astype(float).fillna(0.0).clip(lower=0.0))
    train, test = (rows["ds"] < args.ds).to_numpy(), (rows["ds"] == args.ds).to_numpy()
    if not test.any() or not train.any():
        raise SystemExit(f"training_examples needs candidate rows of {args.ds} and of days before it")
    held_out = rows[test].reset_index(drop=True)
    print(f"{train.sum():,} training rows, {test.sum():,} held-out rows ({int(held_out['click'].sum()):,} positives)")
    scores: dict[str, list[np.ndarray]] = {c: [held_out[c].fillna(0.0).to_numpy()] for c in CANDIDATE_DENSE}
    y = rows.loc[train, "click"].to_numpy()
    scaler = StandardScaler().fit(logged[train])
    for seed in args.seeds:
        tree = HistGradientBoostingClassifier(max_iter=200, random_state=seed).fit(logged[train], y)
        scores.setdefault("gradient-boosted tree", []).append(tree.predict_proba(logged[test])[:, 1])
        mlp = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=50, early_stopping=True, random_state=seed)
        mlp.fit(scaler.transform(logged[train]), y)
        scores.setdefault("MLP (64, 32)", []).append(mlp.predict_proba(scaler.transform(logged[test]))[:, 1])
    for version in args.versions:
        model = load_model(registry.load_version(cfg, version=version))
        chunks = [
            model.predict_proba(model_batch(held_out.iloc[i : i + 8192]))["click"].numpy()
            for i in range(0, len(held_out), 8192)
        ]
        scores[f"version {version} p_click"] = [np.concatenate(chunks)]
    header = "| ordering | " + " | ".join(f"Recall@{k}" for k in args.ks) + " |"
    print(header + "\n|---|" + "---:|" * len(args.ks))
    for name, runs in scores.items():
        cells = []
        for k in args.ks:
            values = [recall_at(held_out, s, k) for s in runs]
            spread = f" ({min(values):.3f}..{max(values):.3f})" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.3f}{spread}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
