"""Retrieval (matching) heads."""
