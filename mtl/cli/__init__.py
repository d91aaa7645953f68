"""The command-line layer, above every stage: one module per command (its ``main``, called by
``jobs/*.py`` and the console scripts), each with the step function that applies the chain's
policy (``mtl.pipeline.policy``) and runs its stage. ``mtl-pipeline`` (``cli/pipeline.py``) runs
those same step functions in order, so each step's "decide, run, record" is written once."""
