"""A name -> class table for the plug-ins that config strings choose (the timm / litgpt way: a string resolves to a
class once, at build).

A registry is live: a class registered in a user's own file counts as soon as that file is imported, so configs
check their strings against it when they are made, never against a list frozen at import. The command-line tools
import the files ``MMROPE_PLUGINS`` names before they read their arguments (:mod:`mmrope.plugins`).
"""

from __future__ import annotations

# the one-line error for an unknown name ends with this
PLUGINS_HINT = "a plug-in counts once its file is imported; the command-line tools import those MMROPE_PLUGINS lists"


class UnknownName(ValueError, KeyError):
    """A config value that no registered class answers to. A ValueError, as every other bad config value; a KeyError,
    as any failed lookup in a mapping."""

    __str__ = ValueError.__str__  # the message itself, not KeyError's repr of it


class Registry(dict):
    """Classes by the config value that selects them; ``field`` names that config field in errors. Looking up a name
    nobody registered raises :class:`UnknownName`, one line that lists the registered names."""

    def __init__(self, field: str):
        super().__init__()
        self.field = field

    def register(self, name: str):
        """Class decorator: make the class the value ``name`` of ``field``, and tell it its name."""
        def add(cls):
            if name in self:
                raise ValueError(f"{self.field}={name!r} is registered twice ({self[name].__name__}, {cls.__name__})")
            cls.name = name
            self[name] = cls
            return cls
        return add

    def __missing__(self, name):
        raise UnknownName(f"{self.field}={name!r} is unknown: expected one of {', '.join(map(repr, self))} "
                          f"({PLUGINS_HINT})")
