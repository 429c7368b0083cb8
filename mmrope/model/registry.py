"""A name -> class table for the plug-ins that config strings choose (the timm / litgpt way: a string resolves to a
class once, at build)."""

from __future__ import annotations


class Registry(dict):
    """Classes by the config value that selects them; ``field`` names that config field in errors."""

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
