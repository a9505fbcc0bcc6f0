"""String registries for the pluggable parts (backbones, balancers, data sets, metrics, losses).

A registry maps a name to a factory. YAML names a factory either by its registered
name or by a ``"package.module:function"`` import path for a user's own.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from automtl.errors import RegistryError

__all__ = ["Registry"]

F = TypeVar("F")


class Registry(Generic[F]):
    """A named collection of entries (factories, classes or objects).

    Args:
        kind: What the registry holds, used in error messages (``"backbone"``).

    Example:
        >>> reg: Registry = Registry("greeting")
        >>> @reg.register("hello")
        ... def hello() -> str:
        ...     return "hi"
        >>> reg.get("hello")()
        'hi'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that registers ``fn`` under ``name``.

        Raises:
            RegistryError: If ``name`` is already taken.
        """

        def deco(fn: F) -> F:
            self.add(name, fn)
            return fn

        return deco

    def add(self, name: str, entry: F) -> None:
        """Register ``entry`` under ``name``.

        Raises:
            RegistryError: If ``name`` is already taken.
        """
        if name in self._entries:
            raise RegistryError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> F:
        """The entry registered as ``name``, or imported from ``"module:attr"``.

        Raises:
            RegistryError: If the name is unknown or the import path does not resolve.
        """
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise RegistryError(f"{self.kind} '{name}': cannot import module '{module_name}': {exc}") from exc
            try:
                return getattr(module, attr)  # type: ignore[no-any-return]
            except AttributeError as exc:
                raise RegistryError(f"{self.kind} '{name}': module '{module_name}' has no attribute '{attr}'") from exc
        known = ", ".join(sorted(self._entries)) or "(none)"
        raise RegistryError(f"unknown {self.kind} '{name}'; registered: {known}; or give 'module:function'")

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
