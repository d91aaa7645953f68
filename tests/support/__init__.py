"""Helpers shared by the tests: generated worlds (worlds.py), table readers and writers
(tables.py), model inputs (model_data.py) and trained evaluation models (evaluation_models.py)."""
