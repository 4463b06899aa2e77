"""Delivery port: how a stored entry reaches every node that holds a recipient."""
