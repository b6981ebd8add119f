"""The one error type of the configuration."""


class ConfigError(ValueError):
    """A bad `options` value: the message names the key and the accepted values."""


__all__ = ["ConfigError"]
