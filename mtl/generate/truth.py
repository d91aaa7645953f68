"""Helpers over the generator's ground truth: the best any model can do on a split."""

from __future__ import annotations

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def auc(df: DataFrame, score_col: str, label_col: str) -> float:
    """Area under the ROC curve of ``score_col`` for the boolean/0-1 ``label_col``."""
    scored = df.select(F.col(score_col).cast("double").alias("score"), F.col(label_col).cast("double").alias("label"))
    evaluator = BinaryClassificationEvaluator(rawPredictionCol="score", labelCol="label", metricName="areaUnderROC")
    return evaluator.evaluate(scored)


def oracle_auc(truth: DataFrame, task: str) -> float:
    """Oracle AUC of ``task`` ('click', 'purchase') on the rows of ``truth/impressions`` given:
    the AUC of the true probabilities against what happened."""
    if task == "click":
        return auc(truth, "p_click", "clicked")
    if task == "purchase":
        return auc(truth.filter("clicked"), "p_purchase", "purchased")
    raise ValueError(f"unknown task {task!r}: use 'click' or 'purchase' (repurchase: oracle_repurchase_auc)")


def repurchase_labels(truth_repurchase: DataFrame, purchases: DataFrame, horizon_days: int, days: int) -> DataFrame:
    """Truth rows whose horizon lies inside the log, with the observed label ``repurchased``: did
    the user buy the item (level 'item') or anything in the category (level 'category') in
    [day, day + horizon)? ``purchases`` has user_id, item_id, category_id and day."""
    complete = truth_repurchase.filter(F.col("day") + horizon_days <= days)
    labelled = []
    for level, key in (("item", "item_id"), ("category", "category_id")):
        rows = complete.filter(F.col("level") == level)
        p = purchases.select("user_id", F.col(key).alias("_key"), F.col("day").alias("_day"))
        in_window = (
            (rows["user_id"] == p["user_id"])
            & (rows[key] == p["_key"])
            & (p["_day"] >= rows["day"])
            & (p["_day"] < rows["day"] + horizon_days)
        )
        hits = rows.join(p, in_window, "left_semi").withColumn("repurchased", F.lit(True))
        misses = rows.join(p, in_window, "left_anti").withColumn("repurchased", F.lit(False))
        labelled += [hits, misses]
    return labelled[0].unionByName(labelled[1]).unionByName(labelled[2]).unionByName(labelled[3])


def oracle_repurchase_auc(labelled: DataFrame, level: str) -> float:
    return auc(labelled.filter(F.col("level") == level), "p_repurchase", "repurchased")
