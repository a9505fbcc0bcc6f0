"""The string registries: names, wildcards, ``module:function`` paths (refused unless trusted),
errors that list names."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from automtl.backbones import BACKBONES
from automtl.balance import BALANCERS
from automtl.data import DATASETS
from automtl.errors import AutoMTLError, RegistryError, UntrustedCodeError
from automtl.losses import LOSSES
from automtl.metrics import METRICS
from automtl.registry import Registry

ALL: dict[str, Registry[Any]] = {"backbone": BACKBONES, "balancer": BALANCERS, "data set": DATASETS, "metric": METRICS, "loss": LOSSES}


def test_register_get_list() -> None:
    reg: Registry = Registry("widget")

    @reg.register("small")
    def small() -> str:
        return "s"

    reg.add("medium", 2)
    reg.add("large", 3)
    assert reg.get("small") is small and reg.get("medium") == 2
    assert reg.list() == ["large", "medium", "small"] == list(reg)
    assert reg.list("m*") == ["medium"] and reg.list("*l*") == ["large", "small"] and reg.list("x*") == []
    assert "small" in reg and "tiny" not in reg and len(reg) == 3


def test_duplicate_name_is_refused() -> None:
    reg: Registry = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(RegistryError, match="widget 'a' is already registered"):
        reg.add("a", 2)
    assert reg.get("a") == 1


def test_module_path_resolves_without_registering() -> None:
    reg: Registry = Registry("widget")
    from tests.helpers import tiny_data

    assert reg.get("tests.helpers:tiny_data", trust_code=True) is tiny_data
    assert len(reg) == 0 and "tests.helpers:tiny_data" not in reg


def _side_effect_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """A module ``name`` on ``sys.path`` whose import writes a marker file (the path returned)."""
    marker = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n\ndef make():\n    return 'made'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return marker


def test_an_import_path_is_refused_unless_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = _side_effect_module(tmp_path, monkeypatch, "automtl_registry_probe")
    reg: Registry = Registry("widget")
    with pytest.raises(UntrustedCodeError) as exc:
        reg.get("automtl_registry_probe:make")
    assert not marker.exists() and "automtl_registry_probe" not in sys.modules  # nothing was imported
    message = str(exc.value)
    assert message.startswith("widget 'automtl_registry_probe:make' is a 'module:function' import path")
    assert "trust_code=True" in message and "\n" not in message
    assert isinstance(exc.value, RegistryError)
    assert reg.get("automtl_registry_probe:make", trust_code=True)() == "made" and marker.exists()
    # trusted once, remembered: a later lookup (a training step's loss) needs no trust
    assert reg.get("automtl_registry_probe:make")() == "made"
    reg.forget_imports()
    with pytest.raises(UntrustedCodeError):
        reg.get("automtl_registry_probe:make")


@pytest.mark.parametrize("kind", sorted(ALL))
@pytest.mark.parametrize("path", ["subprocess:run", "os:system"])
def test_every_registry_refuses_untrusted_import_paths(kind: str, path: str) -> None:
    with pytest.raises(UntrustedCodeError, match=f"{kind} '{path}' is a 'module:function' import path"):
        ALL[kind].get(path)


def test_errors() -> None:
    reg: Registry = Registry("widget")
    with pytest.raises(RegistryError) as exc:
        reg.get("nope")
    assert str(exc.value) == "unknown widget 'nope'; registered: (none); or give 'module:function'"
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, AutoMTLError)
    with pytest.raises(RegistryError, match="cannot import module 'no_such_pkg_xyz'"):
        reg.get("no_such_pkg_xyz:f", trust_code=True)
    with pytest.raises(RegistryError, match="module 'tests.helpers' has no attribute 'missing'"):
        reg.get("tests.helpers:missing", trust_code=True)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_every_registry_lists_its_names_for_an_unknown_one(kind: str) -> None:
    registry = ALL[kind]
    assert len(registry) > 0
    with pytest.raises(RegistryError) as exc:
        registry.get("no-such-entry")
    message = str(exc.value)
    assert message.startswith(f"unknown {kind} 'no-such-entry'")
    assert all(name in message for name in registry.list())


def test_builtin_names() -> None:
    assert {"mlp", "small_cnn"} <= set(BACKBONES)
    assert {"equal", "fixed", "uncertainty", "dwa"} <= set(BALANCERS)
    assert {"auroc", "accuracy", "balanced_accuracy", "r2", "mae", "rmse"} <= set(METRICS)
    assert {"bce", "ce", "mse", "l1", "huber"} <= set(LOSSES)
    assert "tiny" not in DATASETS  # the test data set is reached by path only
