"""Reading usage back: per period, per report, per invoice line (explain)."""
