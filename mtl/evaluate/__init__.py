"""Offline evaluation: a model version and its baselines on a held-out ds, model_metrics, the
report, and the quality gate that publishes (or refuses) the version."""
