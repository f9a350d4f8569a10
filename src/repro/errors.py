"""The error a configuration raises, at the very bottom of the package: the config validator and the
run plans it calls for cross-key checks both raise it, and neither may import the other's callers."""


class ConfigError(ValueError):
    """A configuration that must not run; the message names every offending key."""
