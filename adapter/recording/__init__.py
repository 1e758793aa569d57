"""Recording usage: one increment or a batch, into open reports, cut at period boundaries."""
