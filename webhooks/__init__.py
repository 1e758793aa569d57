"""The HTTP side of metersync: the Stripe webhook receiver, the mirror of Stripe's objects
it feeds, and the ops and usage API (FastAPI app ``webhooks.app:app``)."""
