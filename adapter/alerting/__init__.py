"""Usage alerts: thresholds on usage, rated cost or credit balance, fired once per billing
period per crossing, delivered to the log, a Dramatiq actor and a signed webhook."""
