"""Exceptions raised by tokenprune. Every one names what was wrong and what is allowed.

Also the one formatter of pydantic validation errors (`validation_problems`), so that configs, strategy
parameters and adapter options word a bad field the same way. Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pydantic import ValidationError


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


def field_path(loc: tuple) -> str:
    """A pydantic error location as a path: ('strategies', 2, 'ratio') -> 'strategies[2].ratio'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_problems(
    exc: ValidationError,
    *,
    prefix: tuple = (),
    top_level: str = "(top level)",
    show_input: Literal["after", "inline"] | None = "after",
) -> list[str]:
    """One line per error of `exc`, naming the field by its path (`field_path(prefix + loc)`).

    An error without a location (a model-level validator) is named `top_level`. A key the model does not
    have reads "unknown key"; any other error gives pydantic's message. The value given is shown, except
    for a missing or an unknown key: `show_input="after"` -> "ratio: <message> (got 1.5)",
    `"inline"` -> "ratio=1.5: <message>", None -> "ratio: <message>".
    """
    problems = []
    for err in exc.errors():
        where = field_path(tuple(prefix) + tuple(err["loc"])) or top_level
        unknown = err["type"] == "extra_forbidden"
        message = "unknown key" if unknown else err["msg"]
        shown = show_input is not None and "input" in err and not unknown and err["type"] != "missing"
        if shown and show_input == "inline":
            problems.append(f"{where}={err['input']!r}: {message}")
        elif shown:
            problems.append(f"{where}: {message} (got {err['input']!r})")
        else:
            problems.append(f"{where}: {message}")
    return problems
