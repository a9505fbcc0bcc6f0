"""String registries for the pluggable parts (backbones, balancers, data sets, metrics, losses).

A registry maps a name to a factory. YAML names a factory either by its registered
name or by a ``"package.module:function"`` import path for a user's own.

**Import paths run code.** Importing a module executes it, and the function it names is then
called with arguments from a file, so a config or an exported bundle that names
``subprocess:run`` could run a command. :meth:`Registry.get` therefore resolves an import path
only when the caller passes ``trust_code=True`` (the command line's ``--trust-code``; the same
convention as ``trust_remote_code`` elsewhere), and raises
:class:`~automtl.errors.UntrustedCodeError` otherwise. An import path resolved once with trust
is remembered: later lookups of the same string (a training step's loss, a metric) return it
without asking again, for the rest of the process or until :meth:`Registry.forget_imports`.
Registered names never need trust.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from automtl.errors import RegistryError, UntrustedCodeError

__all__ = ["Registry", "is_import_path"]

F = TypeVar("F")


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the form of a ``"module:attr"`` import path (rather than a registered name)."""
    return ":" in name


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
        >>> reg.get("os:getcwd")
        Traceback (most recent call last):
        ...
        automtl.errors.UntrustedCodeError: greeting 'os:getcwd' is a 'module:function' import path, ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}
        self._imported: dict[str, F] = {}  # import paths resolved with trust_code=True

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

    def get(self, name: str, *, trust_code: bool = False) -> F:
        """The entry registered as ``name``, or imported from ``"module:attr"``.

        Args:
            name: A registered name, or an import path ``"package.module:attr"``.
            trust_code: Allow importing an import path (which runs the module's code). An
                import path resolved with trust is remembered, so later lookups of it need none.

        Raises:
            UntrustedCodeError: ``name`` is an import path, not yet trusted, and ``trust_code``
                is false.
            RegistryError: If the name is unknown or the import path does not resolve.
        """
        if name in self._entries:
            return self._entries[name]
        if not is_import_path(name):
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise RegistryError(f"unknown {self.kind} '{name}'; registered: {known}; or give 'module:function'")
        if name in self._imported:
            return self._imported[name]
        if not trust_code:
            raise UntrustedCodeError(self.kind, name)
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RegistryError(f"{self.kind} '{name}': cannot import module '{module_name}': {exc}") from exc
        try:
            entry: F = getattr(module, attr)
        except AttributeError as exc:
            raise RegistryError(f"{self.kind} '{name}': module '{module_name}' has no attribute '{attr}'") from exc
        self._imported[name] = entry
        return entry

    def forget_imports(self) -> None:
        """Forget the import paths resolved with ``trust_code=True``; each needs trust again."""
        self._imported.clear()

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
