"""Comparing what was sent with Stripe's meter event summaries, and repairing drift."""
