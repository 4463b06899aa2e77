"""Compliance: the SM3-chained, SM2-signed audit trail, separation of duties
(三员分立), TOTP second factor, retention with legal hold, signed exports and
the 等保 2.0 report. See docs/compliance.md.

This package's ``__init__`` imports nothing, so ``tongxin.compliance.roles`` can
be imported from the auth layer without cycles.
"""
