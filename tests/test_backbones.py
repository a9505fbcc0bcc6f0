"""Every registered backbone honours the Backbone contract; user backbones resolve by path."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from automtl.backbones import (
    BACKBONES,
    Backbone,
    MLPBackbone,
    SmallCNN,
    create_backbone,
)
from automtl.errors import RegistryError, UntrustedCodeError
from tests.helpers import TinyBackbone

# Small settings per registered backbone; a backbone missing here is tried on a table and an
# image with its defaults, so a new one is checked the moment it is registered.
SMALL: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "mlp": ((6,), {"hidden": [8, 5, 4], "dropout": 0.1}),
    "small_cnn": ((1, 8, 8), {"channels": [2, 3], "hidden": 5}),
}


def _make(name: str) -> Backbone:
    if name in SMALL:
        shape, options = SMALL[name]
        return create_backbone(name, shape, **options)
    errors = []
    for shape in ((1, 16, 16), (8,)):
        try:
            return create_backbone(name, shape)
        except (ValueError, TypeError) as exc:
            errors.append(exc)
    pytest.fail(f"backbone '{name}' builds on neither a table nor an image; add it to SMALL: {errors}")


@pytest.fixture(params=BACKBONES.list())
def backbone(request: pytest.FixtureRequest) -> Backbone:
    return _make(request.param)


def test_declares_its_shape(backbone: Backbone) -> None:
    assert isinstance(backbone, Backbone)
    assert backbone.n_blocks >= 1 and backbone.out_features >= 1
    assert len(backbone.block_names) == backbone.n_blocks
    assert all(isinstance(n, str) and n for n in backbone.block_names)


def test_make_block_returns_fresh_parameters(backbone: Backbone) -> None:
    torch.manual_seed(0)
    for b in range(backbone.n_blocks):
        first, second = backbone.make_block(b), backbone.make_block(b)
        p1, p2 = list(first.parameters()), list(second.parameters())
        assert p1, f"block {b} has no parameters"
        assert {id(p) for p in p1}.isdisjoint(id(p) for p in p2)
        assert {p.data_ptr() for p in p1}.isdisjoint(p.data_ptr() for p in p2)
        # freshly initialised: the random weights differ ...
        assert any(not torch.equal(a, c) for a, c in zip(p1, p2))
        # ... and training one copy leaves the other alone
        before = [p.detach().clone() for p in p2]
        with torch.no_grad():
            for p in p1:
                p.add_(1.0)
        assert all(torch.equal(a, c) for a, c in zip(before, p2))


def test_chained_blocks_map_input_to_out_features(backbone: Backbone) -> None:
    x = torch.randn(3, *backbone.input_shape)
    for b in range(backbone.n_blocks):
        block = backbone.make_block(b).eval()
        x = block(x)
        assert x.shape[0] == 3 and torch.isfinite(x).all()
    assert x.shape == (3, backbone.out_features)


def test_block_parameter_counts(backbone: Backbone) -> None:
    counts = backbone.block_parameter_counts()
    assert len(counts) == backbone.n_blocks
    assert counts == [sum(p.numel() for p in backbone.make_block(b).parameters()) for b in range(backbone.n_blocks)]
    assert all(c > 0 for c in counts)


@pytest.mark.parametrize("index", [-1, "n_blocks"])
def test_make_block_rejects_an_index_out_of_range(backbone: Backbone, index: Any) -> None:
    index = backbone.n_blocks if index == "n_blocks" else index
    with pytest.raises(IndexError, match=str(index)):
        backbone.make_block(index)


def test_mlp_and_cnn_shapes() -> None:
    mlp = create_backbone("mlp", (2, 3), hidden=[7, 4])
    assert isinstance(mlp, MLPBackbone) and mlp.n_blocks == 2 and mlp.out_features == 4
    assert mlp.block_parameter_counts() == [6 * 7 + 7 + 2 * 7, 7 * 4 + 4 + 2 * 4]  # Linear + LayerNorm
    cnn = create_backbone("small_cnn", (3, 8, 8), channels=[4], hidden=6)
    assert isinstance(cnn, SmallCNN) and cnn.n_blocks == 2 and cnn.out_features == 6
    assert cnn.block_parameter_counts() == [3 * 4 * 9 + 2 * 4, 4 * 4 * 4 * 6 + 6]


@pytest.mark.parametrize(
    ("name", "shape", "options", "message"),
    [
        ("mlp", (6,), {"hidden": []}, "hidden"),
        ("mlp", (6,), {"hidden": [4, 0]}, "positive"),
        ("small_cnn", (8, 8), {}, r"\(C, H, W\)"),
        ("small_cnn", (1, 4, 4), {"channels": [2, 2, 2]}, "halved 3 times"),
    ],
)
def test_bad_options_are_value_errors(name: str, shape: tuple, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_backbone(name, shape, **options)


def test_user_backbone_resolves_by_module_path() -> None:
    backbone = create_backbone("tests.helpers:tiny_backbone", (2, 3), trust_code=True, width=5, n_blocks=3)
    assert isinstance(backbone, TinyBackbone) and backbone.n_blocks == 3
    assert backbone.make_block(0)(torch.zeros(4, 2, 3)).shape == (4, 5)
    assert "tests.helpers:tiny_backbone" not in BACKBONES  # resolved, not registered


def test_user_backbone_path_is_refused_without_trust() -> None:
    with pytest.raises(UntrustedCodeError, match="backbone 'tests.helpers:tiny_backbone' is a 'module:function'"):
        create_backbone("tests.helpers:tiny_backbone", (2, 3), width=5)


def test_factory_must_return_a_backbone() -> None:
    with pytest.raises(TypeError, match="not a Backbone"):
        create_backbone("tests.helpers:not_a_backbone", (3,), trust_code=True)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(RegistryError) as exc:
        create_backbone("resnet9000", (3,))
    message = str(exc.value)
    assert "resnet9000" in message
    for name in BACKBONES.list():
        assert name in message


@pytest.mark.parametrize(
    ("path", "message"),
    [("tests.no_such_module:f", "cannot import module 'tests.no_such_module'"), ("tests.helpers:nope", "no attribute 'nope'")],
)
def test_unresolvable_path_is_a_registry_error(path: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        create_backbone(path, (3,), trust_code=True)
