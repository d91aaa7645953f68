"""The recommendation list of a model version for ds: candidates (the candidates table and the
two-tower top-M), ranked by the multi-task heads, after the business filters. The score job
publishes it; evaluation measures the very same list on a held-out ds."""
