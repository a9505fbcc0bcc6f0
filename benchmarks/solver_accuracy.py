"""Accuracy of every Gramian-based balancer's update against an exact or independent reference.

For each gradient-aggregation balancer whose update weights the task gradients by a function of
their Gramian (MGDA, CAGrad, FairGrad, ConFIG, Nash-MTL, GradVac, IMTL-G, Aligned-MTL, UPGrad,
DualProj, PCGrad), this measures the relative error ``‖d − d_ref‖ / ‖d_ref‖`` of the update
``d`` that the balancer's :meth:`~automtl.balance.GradientAggregation.aggregate` returns (the
code path of a training step, in every mode) on random Jacobians ``J`` ``[m, n]``, ``m = 3..10``
tasks, ``n = 64``, of four kinds:

* ``well``: Gaussian gradients with a mild shared part, row norms 0.5-3 (``κ(J)`` about 10);
* ``ill``: nearly collinear gradients of both signs along one direction, with independent parts
  of ``1e-4 .. 1e-2`` of it and row norms over ``e^±1`` (``κ(J)`` about 1e2-1e5);
* ``rank``: exactly rank-deficient, ``J = A B`` with ``rank B = ⌈m/2⌉``, small integer ``A``,
  ``B``'s entries multiples of 1/256 (so ``J`` is exact in float32), and one task duplicated;
* ``tiny``: ``well`` scaled by ``1e-4`` (``trace G`` about 1e-6; gradients this small occur
  late in training);

each given to the balancer in float32 and in float64. The reference is computed in float64
from the same values (for a float32 ``J``, its values cast to float64), by a method that does
not go through our solvers, most of them not through the Gramian at all:

* MGDA: the minimum-norm point of the convex hull by enumeration of every face, each an
  affine least-squares problem solved on ``J`` by SVD;
* CAGrad: its primal problem (Liu et al., NeurIPS 2021, §3: ``max_d min_i g_iᵀd`` in the ball of
  radius ``c ‖g_0‖`` around the mean ``g_0``), by bisection on the level ``t`` of
  ``{d : J d ≥ t}``, each level's distance to ``g_0`` by quadprog in ``d``-space;
* FairGrad and Nash-MTL: their equations ``G w = w^{-1/α}`` (``α = 1`` for Nash-MTL) by SciPy's
  bounded least squares at ``1e-15`` tolerances (the official codes' solver), ``G`` formed by
  NumPy from ``J``; Nash-MTL's update then scaled to ``‖d‖ <= 1``;
* ConFIG: the paper's ``U⁺ 1`` with ``U`` the unit rows, by the SVD of ``U``;
* IMTL-G: ``d = Σ α_t g_t`` with ``J d ∝ (‖g_t‖)_t`` and ``Σ α = 1``, by the SVD of ``J``;
* Aligned-MTL: its balance transformation from the SVD of ``J`` (torchjd's rank rule);
* UPGrad and DualProj: the projections onto the dual cone ``{x : J x ≥ 0}`` by
  non-negative least squares on ``Jᵀ`` (SciPy's ``nnls``, an exact active-set method);
* PCGrad: Yu et al.'s Alg. 1 on the rows of ``J``, with the same random visiting order;
* GradVac: torchjd's ``GradVacWeighting`` (its own loop) on the NumPy Gramian, same order.

A Jacobian where the method's update is undefined is left out for that method (counted in the
table): ConFIG when ``U⁺ 1 = 0``; FairGrad and Nash-MTL when their equation has no solution
(or the reference solve does not reach a backward error of ``1e-12``); CAGrad when 0 is in the
convex hull of the gradients (its maximiser is then not unique); IMTL-G when ``Σ α = 0``.
Where ``‖d_ref‖`` is below ``1e-6 max_i ‖g_i‖`` (0 in MGDA's hull), the error is divided by
that instead.

Usage::

    python benchmarks/solver_accuracy.py             # print the table
    python benchmarks/solver_accuracy.py --write     # also update benchmarks/RESULTS.md
    python benchmarks/solver_accuracy.py --count 5   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy loads its BLAS: one core, steadier

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from automtl.balance import GradientAggregation, create_balancer
from benchmarks.results_md import machine, write_section

SECTION = "## Solver accuracy"
KINDS = ("well", "ill", "rank", "tiny")
DTYPES = (torch.float32, torch.float64)
N_COLS = 64
CAGRAD_C = 0.4  # the balancer's default
Reference = Callable[[np.ndarray], "np.ndarray | None"]


# ----------------------------------------------------------------------------- Jacobians
def jacobian(kind: str, m: int, rng: np.random.Generator) -> np.ndarray:
    """One random ``J`` ``[m, 64]`` (float64) of ``kind`` (see the module docstring)."""
    if kind in ("well", "tiny"):
        j = rng.standard_normal((m, N_COLS)) + 0.5 * rng.standard_normal((1, N_COLS))
        return j * np.linspace(0.5, 3.0, m)[:, None] * (1e-4 if kind == "tiny" else 1.0)
    if kind == "ill":
        along = rng.uniform(-1.0, 2.0, (m, 1)) * rng.standard_normal((1, N_COLS))
        j = along + 10.0 ** rng.uniform(-4, -2) * rng.standard_normal((m, N_COLS))
        return j * np.exp(rng.uniform(-1.0, 1.0, (m, 1)))
    base = np.round(rng.standard_normal(((m + 1) // 2, N_COLS)) * 256) / 256
    coeffs = rng.integers(-1, 3, (m, base.shape[0]))
    coeffs[~coeffs.any(axis=1), 0] = 1
    j = (coeffs @ base).astype(np.float64)
    j[-1] = j[0]
    return j


def condition(j: np.ndarray) -> float:
    """``σ_max / σ_min`` of ``J`` (``inf`` when rank-deficient to working precision)."""
    s = np.linalg.svd(j, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 1e-13 * s[0] else float("inf")


# ----------------------------------------------------------------------------- references
def min_norm_point(j: np.ndarray) -> np.ndarray:
    """The minimum-norm point of the convex hull of the rows: over every face with affinely
    independent rows, the affine minimiser ``g_0 + D y`` (least squares on ``J`` by SVD) with
    non-negative barycentric weights; the candidate that best meets the optimality condition
    ``g_iᵀd ≥ ‖d‖²`` wins (comparing norms cannot separate points whose squared norms differ
    by less than round-off)."""
    m = j.shape[0]
    candidates = [j[i] for i in range(m)]
    for k in range(2, m + 1):
        for support in itertools.combinations(range(m), k):
            g0 = j[support[0]]
            diffs = (j[list(support[1:])] - g0).T
            if np.linalg.matrix_rank(diffs) < k - 1:
                continue
            y = np.linalg.lstsq(diffs, -g0, rcond=None)[0]
            if min(1.0 - y.sum(), y.min()) >= -1e-12:
                candidates.append(g0 + diffs @ y)
    return min(candidates, key=lambda d: (max(float(d @ d - (j @ d).min()), 0.0), float(d @ d)))


def _origin_in_hull(j: np.ndarray) -> bool:
    return bool(np.linalg.norm(min_norm_point(j)) <= 1e-9 * np.linalg.norm(j, axis=1).max())


def ref_mgda(j: np.ndarray) -> np.ndarray:
    return min_norm_point(j)


def ref_cagrad(j: np.ndarray) -> np.ndarray | None:
    """CAGrad's primal maximiser, by bisection on ``t``: the largest ``t`` whose polyhedron
    ``{d : J d ≥ t}`` comes within ``c ‖g_0‖`` of ``g_0``; its point is the projection of
    ``g_0`` onto it (quadprog, ``min ½‖d‖² − g_0ᵀd`` s.t. ``J d ≥ t``)."""
    import quadprog

    if _origin_in_hull(j):
        return None
    g0 = j.mean(axis=0)
    radius = CAGRAD_C * float(np.linalg.norm(g0))
    eye = np.eye(j.shape[1])

    def project(t: float) -> np.ndarray | None:
        try:
            return np.asarray(quadprog.solve_qp(eye, g0, j.T.copy(), np.full(j.shape[0], t))[0])
        except ValueError:  # infeasible
            return None

    lo = float((j @ g0).min())
    hi = float((j @ g0 + radius * np.linalg.norm(j, axis=1)).min())
    best = project(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        point = project(mid)
        if point is not None and np.linalg.norm(point - g0) <= radius:
            lo, best = mid, point
        else:
            hi = mid
    return best


def _equation_solution(gram: np.ndarray, alpha: float) -> np.ndarray | None:
    """``w > 0`` with ``G w = w^{-1/α}`` by bounded least squares at 1e-15 tolerances from the
    official start ``1/m``, on ``Ĝ = G / ‖G‖_F`` (the solver's tolerances are absolute; if ``ŵ``
    solves ``Ĝ``'s equation, ``w = ‖G‖_F^{-α/(1+α)} ŵ`` solves ``G``'s); ``None`` unless the
    backward error ``max_i |(Gw)_i − w_i^{-1/α}| / ((|G|w)_i + w_i^{-1/α})`` reaches 1e-12."""
    from scipy.optimize import least_squares

    m = gram.shape[0]
    p = 1.0 / alpha
    scale = float(np.linalg.norm(gram))
    if not scale > 0:
        return None
    unit = gram / scale
    with np.errstate(all="ignore"):
        result = least_squares(
            lambda w: unit @ w - w**-p,
            np.full(m, 1.0 / m),
            jac=lambda w: unit + np.diag(p * w ** (-p - 1.0)),
            bounds=(0.0, np.inf),
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
            max_nfev=2000,
        )
    w = np.asarray(result.x) * scale ** (-1.0 / (1.0 + p))
    if not bool((w > 0).all()):
        return None
    backward = float((np.abs(gram @ w - w**-p) / (np.abs(gram) @ w + w**-p)).max())
    return w if backward <= 1e-12 else None


def ref_fairgrad(j: np.ndarray) -> np.ndarray | None:
    w = _equation_solution(j @ j.T, 1.0)
    return None if w is None else w @ j


def ref_nash_mtl(j: np.ndarray) -> np.ndarray | None:
    alpha = _equation_solution(j @ j.T, 1.0)
    if alpha is None:
        return None
    d = alpha @ j
    return d * min(1.0, 1.0 / float(np.linalg.norm(d)))


def ref_config(j: np.ndarray) -> np.ndarray | None:
    norms = np.linalg.norm(j, axis=1, keepdims=True)
    units = np.divide(j, norms, out=np.zeros_like(j), where=norms > 0)
    u_tilde = np.linalg.pinv(units, rcond=max(j.shape) * np.finfo(float).eps) @ np.ones(j.shape[0])
    if np.linalg.norm(u_tilde) < 1e-6:
        return None
    u = u_tilde / np.linalg.norm(u_tilde)
    return float((j @ u).sum()) * u


def _svd(j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``U`` ``[m, r]`` and ``σ`` ``[r]`` of ``J`` with the eigenvalues ``σ²`` of ``G`` above
    ``m ε σ_max²`` (torchjd's rank rule for Aligned-MTL; exact zeros for IMTL-G)."""
    u, s, _ = np.linalg.svd(j, full_matrices=False)
    keep = s**2 > j.shape[0] * np.finfo(float).eps * s[0] ** 2
    return u[:, keep], s[keep]


def ref_imtl_g(j: np.ndarray) -> np.ndarray | None:
    u, s = _svd(j)
    alpha = u @ ((u.T @ np.linalg.norm(j, axis=1)) / s**2)  # G⁺ (‖g_t‖)_t
    total = float(alpha.sum())
    if abs(total) < 1e-12 * float(np.abs(alpha).sum()):
        return None
    return (alpha / total) @ j


def ref_aligned_mtl(j: np.ndarray) -> np.ndarray:
    u, s = _svd(j)
    balance = s[-1] * (u / s) @ u.T  # √λ_min · V Λ^{-1/2} Vᵀ with λ = σ²
    return (balance @ np.full(j.shape[0], 1.0 / j.shape[0])) @ j


def _dual_cone_projection(j: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``argmin_{x : J x ≥ 0} ‖x − g‖`` = ``g + Jᵀ λ`` with ``λ = argmin_{λ ≥ 0} ‖Jᵀλ + g‖``."""
    from scipy.optimize import nnls

    lam = nnls(j.T, -g, maxiter=50 * j.shape[0])[0]
    return g + j.T @ lam


def ref_upgrad(j: np.ndarray) -> np.ndarray:
    return np.mean([_dual_cone_projection(j, g) for g in j], axis=0)


def ref_dualproj(j: np.ndarray) -> np.ndarray:
    return _dual_cone_projection(j, j.mean(axis=0))


def ref_pcgrad(j: np.ndarray) -> np.ndarray:
    """Yu et al. (NeurIPS 2020), Alg. 1 on the rows, visiting order from ``torch.randperm`` as
    torchjd draws it (seeded as the balancer is)."""
    torch.manual_seed(0)
    m = j.shape[0]
    total = np.zeros(j.shape[1])
    for i in range(m):
        g = j[i].copy()
        for k in torch.randperm(m).tolist():
            if k != i and g @ j[k] < 0:
                g -= (g @ j[k]) / (j[k] @ j[k]) * j[k]
        total += g
    return total


def ref_gradvac(j: np.ndarray) -> np.ndarray:
    """torchjd's ``GradVacWeighting`` (β = 0.5), two calls of one instance, the second compared."""
    from torchjd.aggregation import GradVacWeighting

    weighting = GradVacWeighting(beta=0.5)
    gram = torch.from_numpy(j @ j.T)
    torch.manual_seed(0)
    weighting(gram)
    weights = weighting(gram)
    return weights.numpy() @ j


REFERENCES: dict[str, tuple[str, Reference]] = {
    "mgda": ("face enumeration, lstsq on J", ref_mgda),
    "cagrad": ("primal by bisection + quadprog", ref_cagrad),
    "fairgrad": ("SciPy least squares, tol 1e-15", ref_fairgrad),
    "nash_mtl": ("SciPy least squares, tol 1e-15", ref_nash_mtl),
    "config": ("paper: SVD pinv of unit rows", ref_config),
    "imtl_g": ("SVD of J", ref_imtl_g),
    "aligned_mtl": ("SVD of J", ref_aligned_mtl),
    "upgrad": ("NNLS on J (exact projection)", ref_upgrad),
    "dualproj": ("NNLS on J (exact projection)", ref_dualproj),
    "pcgrad": ("Alg. 1 on the rows of J", ref_pcgrad),
    "gradvac": ("torchjd GradVacWeighting", ref_gradvac),
}


# ----------------------------------------------------------------------------- ours
def ours(name: str, j: torch.Tensor) -> np.ndarray:
    """The balancer's update ``[n]`` on ``j`` (fresh state; GradVac's second call, as its
    reference), in float64."""
    tasks = tuple(f"t{i}" for i in range(j.shape[0]))
    balancer = create_balancer(name, list(tasks))
    assert isinstance(balancer, GradientAggregation)
    torch.manual_seed(0)
    vector, _ = balancer.aggregate(tasks, j)
    if name == "gradvac":
        vector, _ = balancer.aggregate(tasks, j)
    return vector.double().numpy()


def projector_variant(name: str, j: torch.Tensor) -> np.ndarray:
    """Not a balancer: torchjd's UPGrad / DualProj weighting on our float64 Gramian with its
    quadprog projector at ``reg_eps = 1e-12`` (default ``1e-4``: the ridge added to the
    trace-normalised ``G``) and no trace cutoff (default ``norm_eps = 1e-4``: below that
    ``trace G``, ``G`` is replaced by zero), to attribute the balancers' errors."""
    from torchjd._linalg import QuadprogProjector
    from torchjd.aggregation import DualProjWeighting, UPGradWeighting

    from automtl.balance._aggregation import combine64, gramian64

    projector = QuadprogProjector(norm_eps=float(np.finfo(float).tiny), reg_eps=1e-12)
    weighting = UPGradWeighting(projector=projector) if name == "upgrad" else DualProjWeighting(projector=projector)
    return combine64(weighting(gramian64(j)), j).double().numpy()


#: Rows of the table: (label, balancer whose reference applies, our update).
ROWS: list[tuple[str, str, Callable[[torch.Tensor], np.ndarray]]] = [
    *[(name, name, lambda j, name=name: ours(name, j)) for name in REFERENCES],
    *[
        (f"{name}: torchjd projector, reg_eps 1e-12, no trace cutoff (diagnostic)", name, lambda j, name=name: projector_variant(name, j))
        for name in ("upgrad", "dualproj")
    ],
]


def relative_error(got: np.ndarray, want: np.ndarray, j: np.ndarray) -> float:
    """``‖d − d_ref‖ / max(‖d_ref‖, 1e-6 max_i ‖g_i‖)``."""
    floor = 1e-6 * float(np.linalg.norm(j, axis=1).max())
    return float(np.linalg.norm(got - want)) / max(float(np.linalg.norm(want)), floor)


def gradient_scaled_error(got: np.ndarray, want: np.ndarray, j: np.ndarray) -> float:
    """``‖d − d_ref‖ / max_i ‖g_i‖``: the error on the scale of the gradients."""
    return float(np.linalg.norm(got - want)) / float(np.linalg.norm(j, axis=1).max())


# ----------------------------------------------------------------------------- run and report
Errors = dict[tuple[str, str, str], list[float]]


def measure(count: int, seed: int) -> tuple[Errors, Errors, dict[str, list[float]], dict[tuple[str, str, str], int]]:
    """Relative errors and gradient-scaled errors per (row label, kind, dtype), ``κ(J)`` per
    kind, and per (row label, kind, dtype) how many references were below ``1e-6 max_i ‖g_i‖``,
    over ``count`` Jacobians per kind."""
    rng = np.random.default_rng(seed)
    errors: Errors = {}
    scaled: Errors = {}
    zero_refs: dict[tuple[str, str, str], int] = {}
    kappas: dict[str, list[float]] = {}
    for kind in KINDS:
        for i in range(count):
            j64 = jacobian(kind, 3 + i % 8, rng)
            kappas.setdefault(kind, []).append(condition(j64))
            for dtype in DTYPES:
                j = torch.tensor(j64, dtype=dtype)
                exact = j.double().numpy()
                wanted = {name: reference(exact) for name, (_, reference) in REFERENCES.items()}
                for label, name, update in ROWS:
                    key = (label, kind, _dtype(dtype))
                    errs, scaled_errs = errors.setdefault(key, []), scaled.setdefault(key, [])
                    want = wanted[name]
                    if want is not None:
                        got = update(j)
                        errs.append(relative_error(got, want, exact))
                        scaled_errs.append(gradient_scaled_error(got, want, exact))
                        if np.linalg.norm(want) < 1e-6 * np.linalg.norm(exact, axis=1).max():
                            zero_refs[key] = zero_refs.get(key, 0) + 1
    return errors, scaled, kappas, zero_refs


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def table(errors: Errors, count: int) -> str:
    columns = [(kind, _dtype(dtype)) for kind in KINDS for dtype in DTYPES]
    lines = [
        "| solver | reference | " + " | ".join(f"{k} {d}" for k, d in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for label, name, _ in ROWS:
        cells = []
        for kind, dtype in columns:
            errs = errors[(label, kind, dtype)]
            if not errs:
                cells.append(f"- (0/{count})")
                continue
            cell = f"{np.median(errs):.1e} / {np.max(errs):.1e}"
            cells.append(cell + ("" if len(errs) == count else f" ({len(errs)}/{count})"))
        lines.append(f"| {label} | {REFERENCES[name][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kappa_line(kappas: dict[str, list[float]]) -> str:
    parts = []
    for kind in KINDS:
        finite = [k for k in kappas[kind] if np.isfinite(k)]
        if not finite:
            parts.append(f"`{kind}` rank-deficient (all {len(kappas[kind])})")
        else:
            parts.append(f"`{kind}` median {np.median(finite):.1e}, max {np.max(finite):.1e}")
    return "- κ(J) = σ_max/σ_min: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=24, help="Jacobians per kind (m = 3..10 in turn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="update the section in benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    started = time.time()
    errors, scaled, kappas, zero_refs = measure(args.count, args.seed)
    command = "python benchmarks/solver_accuracy.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            SECTION,
            "",
            (
                "Relative error of each Gramian-based balancer's update against an exact or independent "
                "reference computed in float64 from the same values (lower is better): median / max over "
                f"{args.count} random Jacobians `[m, {N_COLS}]` per kind, `m = 3..10` tasks, each given to "
                "`GradientAggregation.aggregate` in float32 and in float64. In brackets, how many Jacobians "
                "were compared where the method's update is undefined on some (see `benchmarks/solver_accuracy.py`)."
            ),
            "",
            f"- command: `{command.strip()}`",
            f"- machine: {machine()}",
            f"- date: {datetime.date.today().isoformat()}; run time {time.time() - started:.0f} s",
            (
                "- kinds: `well` Gaussian gradients, mild shared part; `ill` nearly collinear gradients of both "
                "signs (independent parts 1e-4..1e-2); `rank` exactly rank-deficient (`J = A B`, rank ⌈m/2⌉, "
                "one task duplicated), exact in float32; `tiny` the `well` kind scaled by 1e-4."
            ),
            _kappa_line(kappas),
            "",
            table(errors, args.count),
            "",
            reading(errors, scaled, zero_refs),
        ]
    )
    print(text)
    if args.write:
        write_section(text)
    return 0


def _worst(errors: Errors, labels: list[str], kinds: tuple[str, ...], dtype: str | None = None) -> float:
    """The largest error of ``labels`` over ``kinds``, for ``dtype`` (both when ``None``)."""
    dtypes = [_dtype(d) for d in DTYPES] if dtype is None else [dtype]
    values = [e for label in labels for kind in kinds for d in dtypes for e in errors[(label, kind, d)]]
    return max(values) if values else float("nan")


def _median(errors: Errors, label: str, kind: str) -> float:
    values = errors[(label, kind, "float64")]
    return float(np.median(values)) if values else float("nan")


def reading(errors: Errors, scaled: Errors, zero_refs: dict[tuple[str, str, str], int]) -> str:
    """The paragraph under the table, its numbers read from this run's errors."""
    exact = [name for name in REFERENCES if name not in ("upgrad", "dualproj")]
    projections = ["upgrad", "dualproj"]
    diagnostics = [label for label, _, _ in ROWS if label not in REFERENCES]
    most = max(map(len, errors.values()))
    skipped = sorted({label for (label, _, _), errs in errors.items() if len(errs) < most})
    return (
        "Reading: for "
        + ", ".join(exact)
        + f", the float32 columns are at most {_worst(errors, exact, KINDS, 'float32'):.1e} (float32's unit "
        "roundoff is 6.0e-08); the float64 columns at most "
        f"{_worst(errors, exact, ('well', 'rank', 'tiny'), 'float64'):.1e} on the `well`, `rank` and `tiny` kinds "
        f"and {_worst(errors, exact, ('ill',), 'float64'):.1e} on `ill`. Left out where the update is undefined or "
        f"the reference solve did not converge (counts in brackets): {', '.join(skipped) or 'none'}. UPGrad and "
        "DualProj, torchjd's weightings on the same float64 Gramian, are off by up to "
        f"{_worst(errors, projections, ('ill',)):.1e} on `ill` (float64 medians "
        f"{_median(errors, 'upgrad', 'ill'):.1e} and {_median(errors, 'dualproj', 'ill'):.1e}); on `rank` by up to "
        f"{_worst(scaled, projections, ('rank',), 'float64'):.1e} of the largest gradient's norm (on "
        f"{zero_refs.get(('upgrad', 'rank', 'float64'), 0)} (UPGrad) and "
        f"{zero_refs.get(('dualproj', 'rank', 'float64'), 0)} (DualProj) of these Jacobians the exact projection "
        "is below 1e-6 of that norm, and the table divides by that); UPGrad by up to "
        f"{_worst(errors, ['upgrad'], ('well',), 'float64'):.1e} on `well` and "
        f"{_worst(errors, ['upgrad'], ('tiny',), 'float64'):.1e} on `tiny`. The two diagnostic rows run the same "
        "torchjd weightings with their quadprog projector's ridge lowered from 1e-4 to 1e-12 and its trace cutoff "
        "(G taken as zero when trace G < 1e-4) removed: their errors are at most "
        f"{_worst(errors, diagnostics, ('ill', 'rank')):.1e} on `ill` and `rank` and "
        f"{_worst(errors, diagnostics, ('well', 'tiny')):.1e} on `well` and `tiny`, either dtype."
    )


if __name__ == "__main__":
    raise SystemExit(main())
