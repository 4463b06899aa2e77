"""Tongxin: an on-premises enterprise instant-messaging appliance."""

__version__ = "0.1.0"
