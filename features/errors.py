"""Errors of the dictionary layer that front ends report in one line; importable without torch."""


class FeatureNotFound(LookupError):
    """No feature for an id or a name; the message says so in one line."""
