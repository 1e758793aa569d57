"""Closing due reports and pushing them to Stripe (v1 calls or the v2 stream)."""
