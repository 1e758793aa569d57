"""Pure rules: aggregation, validation, windows, schedules, what a report sends, drift. No I/O."""
