"""Accounts, password hashing, signed tokens and lockout."""
