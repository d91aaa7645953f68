"""Hyper-parameter search (``mtl-tune --ds D``): an Optuna study whose trials are training runs
on the train job's window and validation day.

- ``space``: the search space, ``conf/tune/<name>.yaml``, typed and checked against the model config;
- ``study``: the study's storage, the objective (one training run, pruned per epoch), the workers;
- ``job``: ``run_tune``: plan once, run what is left of the budget, write the best model config.
"""
