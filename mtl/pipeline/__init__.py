"""The daily chain: its steps (steps.py), the local runner and the output data-quality checks."""
