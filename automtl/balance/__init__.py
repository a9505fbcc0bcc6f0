"""Loss weighting and gradient aggregation behind one interface (losses in, gradients written).

Two families (see :mod:`automtl.balance._base`):

* loss weighting: ``equal``, ``fixed``, ``uncertainty``, ``dwa``, ``gradnorm``, ``rlw``,
  ``famo``, ``gls``, ``scale_invariant``, ``imtl_l``;
* gradient aggregation (torchjd aggregators, with the tree rule and a ``"full"`` or
  ``"representation"`` mode; see :mod:`automtl.balance._aggregation`): ``upgrad``, ``mgda``,
  ``pcgrad``, ``cagrad``, ``nash_mtl``, ``imtl_g``, ``aligned_mtl``, ``gradvac``,
  ``dualproj``, ``graddrop``, ``config``, ``fairgrad``, ``excess_mtl``.

:func:`describe_balancers` lists each registered name with its paper and hyperparameters.
"""

from __future__ import annotations

from automtl.balance._aggregation import MODES, GradientAggregation
from automtl.balance._aggregators import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradDrop,
    GradVac,
    NashMTL,
    PCGrad,
    UPGrad,
)
from automtl.balance._base import (
    BALANCERS,
    Balancer,
    HParam,
    LossWeighting,
    StepContext,
    create_balancer,
    register_balancer,
)
from automtl.balance._famo import FAMO
from automtl.balance._gradnorm import GradNorm
from automtl.balance._listing import describe_balancers
from automtl.balance._scalarization import GLS, IMTLL, RLW, ScaleInvariant
from automtl.balance._weighting import (
    DWA,
    EqualWeighting,
    FixedWeighting,
    UncertaintyWeighting,
)

__all__ = [
    "BALANCERS",
    "DWA",
    "FAMO",
    "GLS",
    "IMTLG",
    "IMTLL",
    "MGDA",
    "MODES",
    "RLW",
    "AlignedMTL",
    "Balancer",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "EqualWeighting",
    "ExcessMTL",
    "FairGrad",
    "FixedWeighting",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GradientAggregation",
    "HParam",
    "LossWeighting",
    "NashMTL",
    "PCGrad",
    "ScaleInvariant",
    "StepContext",
    "UPGrad",
    "UncertaintyWeighting",
    "create_balancer",
    "describe_balancers",
    "register_balancer",
]
