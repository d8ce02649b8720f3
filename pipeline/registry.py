"""Named registries of models, datasets and estimators, extensible without editing this package.

    from pipeline.registry import MODELS
    @MODELS.register("my_mlp")
    def my_mlp(input_shape, n_classes, cfg): ...
    MODELS.get("my_mlp")              # the function
    MODELS.get("mypkg.nets:build")    # an entry point: imported on first use

A name holding a colon is an entry point `package.module:function`, imported when asked for, so
configs can name code that is not registered in this package (the style of torchvision's
`get_model`, with entry points instead of plug-in discovery).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipeline.errors import KnownFailure


class RegistryError(KnownFailure, ValueError):
    """An unknown name or an entry point that cannot be imported; the message lists the choices."""


def resolve_entry_point(spec: str) -> Callable[..., Any]:
    """`package.module:attribute` (dots allowed after the colon) -> the object it names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise RegistryError(f"{spec!r} is not an entry point: write 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise RegistryError(f"entry point {spec!r}: cannot import {module_name!r} ({err}); put it "
                            "on PYTHONPATH or install the package that holds it") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"entry point {spec!r}: {module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RegistryError(f"entry point {spec!r} names {type(obj).__name__}, not a function")
    return obj


def check_new_name(kind: str, name: str, builtin: frozenset[str] | tuple[str, ...]) -> None:
    """Refuse a name to register: one holding ':' (entry points do) or a built-in one, whose
    silent replacement would change every config naming it."""
    if ":" in name:
        raise RegistryError(f"{kind} name {name!r} may not hold ':' (entry points do)")
    if name in builtin:
        raise RegistryError(f"{kind} name {name!r} is a built-in one; register yours under another "
                            f"name (built-ins: {', '.join(sorted(builtin))})")


class Registry:
    """Name -> callable, with `register` as a decorator and entry points as a fallback."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._builtin: frozenset[str] = frozenset()

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            check_new_name(self.kind, name, self._builtin)
            self._items[name] = fn
            return fn
        return add

    def seal(self) -> None:
        """Mark every name registered so far as built-in: registering it again is refused."""
        self._builtin = frozenset(self._items)

    def get(self, name: str) -> Callable[..., Any]:
        if ":" in name:
            return resolve_entry_point(name)
        if name not in self._items:
            raise RegistryError(f"unknown {self.kind} {name!r}; registered: {', '.join(self._items)}"
                                " (or name an entry point 'package.module:function')")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return list(self._items)
