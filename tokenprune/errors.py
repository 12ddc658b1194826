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
