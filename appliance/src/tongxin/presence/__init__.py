"""Presence port: which users are online, on how many devices."""
