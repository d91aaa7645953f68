"""Candidate generation: cheap, high-recall sources of items per user as of ds, for the ranker."""
