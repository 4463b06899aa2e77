"""Encrypted, checksummed backups of a site and their restore (``tongxin backup``)."""
