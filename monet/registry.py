"""One small registry: name -> builder, with the one "unknown X" error text.

Used for model families (``monet.models.FAMILIES``), encoders (``monet.models.ENCODERS``) and
datasets (``monet.data.DATASETS``). As in timm's ``@register_model``, each builder registers
itself where it is defined; this module imports nothing from the modules that use it, so the
registries add no import circle. The package ``__init__`` of each registry imports its built-in
modules explicitly: a broken module fails loudly at import, it is never swallowed.

Example:
    >>> COLORS = Registry("colour", field="colour")
    >>> @COLORS.register("red")
    ... def _red():
    ...     return (255, 0, 0)
    >>> COLORS.get("red")()
    (255, 0, 0)
    >>> COLORS.names()
    ['red']
    >>> COLORS.get("blue")
    Traceback (most recent call last):
    ...
    monet.errors.ConfigError: colour: unknown colour 'blue'; expected one of ['red']
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

from monet.errors import ConfigError


def unknown_name(field: str, kind: str, name, expected: Iterable[str]) -> ConfigError:
    """The house error for a name that is not one of ``expected`` (one line)."""
    return ConfigError(f"{field}: unknown {kind} {name!r}; expected one of {sorted(expected)}")


class Registry:
    """Builders by name.

    Args:
        kind: what the names are, for messages ("model family", "dataset", ...).
        field: the config field or flag the name comes from, for messages.
    """

    def __init__(self, kind: str, field: Optional[str] = None):
        self.kind = kind
        self.field = field or kind
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        """Decorator: register ``fn`` under ``name`` (a second registration of a name is an error)."""
        def deco(fn: Callable) -> Callable:
            if name in self._entries and self._entries[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is registered twice "
                                 f"({self._entries[name].__module__} and {fn.__module__})")
            self._entries[name] = fn
            return fn
        return deco

    def get(self, name: str) -> Callable:
        """The builder of ``name``; an unknown name raises the one ``ConfigError`` line."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_name(self.field, self.kind, name, self._entries) from None

    def names(self) -> list:
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


# The model-family registry: ``@FAMILIES.register("name") def name(config, spec, input_shape)``
# returns a :class:`monet.models.base.MultiTaskModel` (the builder builds its own encoder).
FAMILIES = Registry("model family", field="family")
