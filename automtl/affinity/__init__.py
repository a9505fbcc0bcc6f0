"""Inter-task affinity: measure it, inspect it as a graph, derive groupings and trees from it.

Measures (``matrix[i, j]`` is always the effect of task ``i`` on task ``j``; positive = helps):

* ``lookahead``: TAG's ``Z_{i→j} = 1 − L_j(θ_s after a step on task i) / L_j(θ_s)`` (Fifty et
  al., NeurIPS 2021), inside one training run, with the real optimizer, leaving the run
  bitwise unchanged (:class:`LookaheadAffinity`);
* ``cosine``: cosine similarity of task gradients on the shared parameters (:class:`GradientCosine`);
* ``rsa`` / ``cka``: similarity of single-task networks' representations (Vandenhende et
  al., BMVC 2020; Kornblith et al., ICML 2019).

Python twins of the CLI::

    from automtl import load_config
    from automtl.affinity import measure_affinity, load_affinity, format_affinity, plot_affinity
    result = measure_affinity(load_config("search_spaces/quickstart.yaml"))   # automtl affinity CONFIG --out DIR
    result.save("affinity/quickstart")
    print(format_affinity(load_affinity("affinity/quickstart").reading()))  # automtl affinity show DIR
    # .reading() is each task's own part; .reading(with_momentum=True):       #   ... --with-momentum
    plot_affinity(result, "quickstart_affinity.png")                         #   ... --plot FILE.png
"""

from __future__ import annotations

from automtl.affinity._base import AffinityMeter, shared_parameters
from automtl.affinity._cosine import GradientCosine
from automtl.affinity._grouping import (
    Grouping,
    best_grouping,
    grouping_score,
    select_grouping,
)
from automtl.affinity._lookahead import LookaheadAffinity
from automtl.affinity._plot import plot_affinity
from automtl.affinity._representation import linear_cka, representation_affinity, rsa
from automtl.affinity._result import (
    AffinityResult,
    format_affinity,
    load_affinity,
    to_dot,
)
from automtl.affinity._run import (
    DEFAULT_EVERY,
    MEASURES,
    measure_affinity,
    train_config_for,
)
from automtl.affinity._state import TrainingStateGuard
from automtl.affinity._tree import (
    Dendrogram,
    affinity_dendrogram,
    grouping_params,
    seed_params,
    trees_from_affinity,
    trial_params_for_tree,
)

__all__ = [
    "DEFAULT_EVERY",
    "MEASURES",
    "AffinityMeter",
    "AffinityResult",
    "Dendrogram",
    "GradientCosine",
    "Grouping",
    "LookaheadAffinity",
    "TrainingStateGuard",
    "affinity_dendrogram",
    "best_grouping",
    "format_affinity",
    "grouping_params",
    "grouping_score",
    "linear_cka",
    "load_affinity",
    "measure_affinity",
    "plot_affinity",
    "representation_affinity",
    "rsa",
    "seed_params",
    "select_grouping",
    "shared_parameters",
    "to_dot",
    "train_config_for",
    "trees_from_affinity",
    "trial_params_for_tree",
]
