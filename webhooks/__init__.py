"""HTTP app (issue 4)."""
