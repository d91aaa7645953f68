"""Daily scoring: top-K recommendations and repurchase predictions from the published model."""
