"""Dramatiq workers (issue 3)."""
