"""Plain-data descriptions of the registered balancers (for ``automtl list balancers``)."""

from __future__ import annotations

import inspect
from typing import Any

from automtl.balance._base import BALANCERS, Balancer

__all__ = ["describe_balancers"]


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def describe_balancers(pattern: str = "*") -> list[dict[str, Any]]:
    """Every registered balancer matching ``pattern`` (shell wildcard), sorted by name.

    Returns:
        One mapping per balancer: ``name``, ``family`` (``loss_weighting`` or
        ``gradient_aggregation``), ``paper`` (the source, with the equation or algorithm),
        ``summary`` (first paragraph of its docstring), ``class`` (``module:Class``),
        ``requires`` (optional modules it needs, empty if none), ``missing`` (those not
        installed here), ``install`` (the command that installs them, or ``""``), and
        ``hyperparameters``: ``{name: {default, low, high, log, choices, doc}}`` with the
        search range (``choices`` is a list or ``None``).
    """
    out = []
    for name in BALANCERS.list(pattern):
        cls = BALANCERS.get(name)
        if not (isinstance(cls, type) and issubclass(cls, Balancer)):
            continue
        requires = tuple(getattr(cls, "requires", ()))
        missing_fn = getattr(cls, "missing_requirements", None)
        missing = list(missing_fn()) if callable(missing_fn) else []
        out.append(
            {
                "name": name,
                "family": cls.family,
                "paper": cls.paper,
                "summary": _summary(cls),
                "class": f"{cls.__module__}:{cls.__qualname__}",
                "requires": list(requires),
                "missing": missing,
                "install": getattr(cls, "install_hint", "") if requires else "",
                "hyperparameters": {
                    hp_name: {
                        "default": hp.default,
                        "low": hp.low,
                        "high": hp.high,
                        "log": hp.log,
                        "choices": list(hp.choices) if hp.choices is not None else None,
                        "doc": hp.doc,
                    }
                    for hp_name, hp in cls.hyperparameters.items()
                },
            }
        )
    return out
