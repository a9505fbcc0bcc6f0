"""Loss weighting and gradient aggregation behind one interface (losses in, gradients written)."""

from __future__ import annotations

from automtl.balance._base import (
    BALANCERS,
    Balancer,
    HParam,
    LossWeighting,
    StepContext,
    create_balancer,
    register_balancer,
)
from automtl.balance._weighting import DWA, EqualWeighting, FixedWeighting, UncertaintyWeighting

__all__ = [
    "BALANCERS",
    "DWA",
    "Balancer",
    "EqualWeighting",
    "FixedWeighting",
    "HParam",
    "LossWeighting",
    "StepContext",
    "UncertaintyWeighting",
    "create_balancer",
    "register_balancer",
]
