"""The one plug-in seam: a named registry per kind (scorers, frame sources, triggers, audit methods).

A plug-in is registered under the name a config or manifest uses, either as the object itself
(with :meth:`Registry.register` as a decorator) or as a ``"module:attribute"`` string imported
on first use (heavy plug-ins such as TensorFlow audits stay unimported until asked for). Asking
for an unknown name raises ``ValueError`` listing the names there are.

Example:
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square")
    ... class Square:
    ...     pass
    >>> SHAPES.get("square") is Square, SHAPES.names()
    (True, ('square',))
    >>> SHAPES.get("circle")
    Traceback (most recent call last):
    ...
    ValueError: unknown shape 'circle'; expected one of square
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
    """Plug-ins of one kind by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Callable:
        """Register ``obj`` (or a ``"module:attr"`` string) under ``name``; without ``obj``, a decorator."""
        if obj is not None:
            self._items[name] = obj
            return obj

        def deco(target):
            self._items[name] = target
            return target
        return deco

    def get(self, name: str) -> Any:
        try:
            obj = self._items[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {', '.join(self._items)}") from None
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            obj = self._items[name] = getattr(importlib.import_module(module), attr)
        return obj

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
