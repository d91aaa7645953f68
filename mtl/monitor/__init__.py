"""The daily monitor: drift and health of the chain's tables for one ds, with thresholds and alerts."""
