"""Exceptions raised by tokenprune. Every one names what was wrong and what is allowed."""


class TokenpruneError(Exception):
    """Base class of every error tokenprune raises on purpose."""


class UnknownStrategyError(TokenpruneError, KeyError):
    """A strategy name that no installed plugin registers."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InvalidParameterError(TokenpruneError, ValueError):
    """A strategy parameter outside its allowed range, or not valid for the model at hand."""


class UnsupportedModelError(TokenpruneError, TypeError):
    """A model class, backbone, attention backend or layer layout that no adapter can serve."""


class AlreadyPrunedError(TokenpruneError, RuntimeError):
    """`prune` entered on a model that is already inside another `prune` context."""


class UnsupportedInputError(TokenpruneError, ValueError):
    """Inputs the engine cannot serve correctly (e.g. right padding); refused instead of answering wrongly."""


class PluginError(TokenpruneError, RuntimeError):
    """A plugin that failed to load or registered something invalid."""


class ConfigError(TokenpruneError, ValueError):
    """A config file that cannot be read or does not validate; the message names the file and the field path."""


class DataError(TokenpruneError, ValueError):
    """Evaluation data that cannot be read: a missing file, an unreadable image, a row missing a field.

    The message names the file and, where there is one, the row and the field.
    """


class PluginWarning(UserWarning):
    """A plugin that could not be loaded or registered something invalid; the other plugins still work."""
