"""Prepaid credits: the ledger API (``ms.credits``) and drawdown as usage is rated."""
