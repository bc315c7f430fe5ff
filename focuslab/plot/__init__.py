"""matplotlib figures from results on disk (never re-runs anything)."""
