"""A picture of an affinity result: the graph (edges by strength and sign) and a heat map.

Needs matplotlib, an optional extra: ``pip install 'automtl[plot]'``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from automtl.affinity._result import AffinityResult, _cell, _scale

__all__ = ["plot_affinity"]

_POS = "#2166ac"  # blue: helps
_NEG = "#b2182b"  # red: hurts


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting affinity needs matplotlib; install the plot extra: pip install 'automtl[plot]'"
        ) from exc
    return plt


def plot_affinity(
    result: AffinityResult,
    path: str | os.PathLike[str],
    *,
    max_edges: int | None = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Save a PNG (or any format matplotlib knows by the suffix) with two panels.

    Left: the tasks on a circle, in dendrogram order (similar tasks side by side), joined by
    the strongest pairs of the symmetric affinity ``(M[i, j] + M[j, i]) / 2``; blue = the two
    tasks help each other, red = they hurt each other, line width and opacity grow with
    ``|value|``. Right: the full directed matrix as a heat map (row = source task ``i``,
    column = affected task ``j``; blue positive, red negative, white 0; diagonal greyed out
    since a task's effect on itself is on another scale), values written in the cells; for a
    lookahead result, a last row shows the momentum-only step's effect ``Z_{0→j}``.

    Args:
        result: An affinity result.
        path: Output file (``.png``); parent folders are created.
        max_edges: Edges drawn in the graph (default ``max(8, 2T)``, strongest first).
        title: Figure title (default: the measure and the data set).
        dpi: Resolution.

    Returns:
        The path written.

    Raises:
        ImportError: If matplotlib is not installed (``pip install 'automtl[plot]'``).
    """
    plt = _matplotlib()
    from matplotlib.colors import SymLogNorm
    from matplotlib.lines import Line2D

    tasks = result.tasks
    n = len(tasks)
    sym = result.symmetrized()
    order = _leaf_order(result) if n > 1 else list(tasks)
    index = {t: i for i, t in enumerate(tasks)}

    fig, (ax_g, ax_h) = plt.subplots(1, 2, figsize=(15.5, 7.2), gridspec_kw={"width_ratios": [1.0, 1.15]})
    # ---- graph
    angle = {t: math.pi / 2 - 2 * math.pi * k / n for k, t in enumerate(order)}
    pos = {t: (math.cos(a), math.sin(a)) for t, a in angle.items()}
    pairs: list[tuple[float, str, str, float]] = []
    for i in range(n):
        for j in range(i + 1, n):
            v = float(sym[i, j])
            if math.isfinite(v) and v != 0:
                pairs.append((abs(v), tasks[i], tasks[j], v))
    pairs.sort(reverse=True)
    keep = pairs[: (max_edges if max_edges is not None else max(8, 2 * n))]
    peak = keep[0][0] if keep else 1.0
    for strength, src, dst, v in reversed(keep):
        rel = math.sqrt(strength / peak)  # square root: weak edges stay visible next to a dominant one
        (xa, ya), (xb, yb) = pos[src], pos[dst]
        ax_g.plot([xa, xb], [ya, yb], color=_POS if v > 0 else _NEG, lw=0.8 + 6.0 * rel, alpha=0.35 + 0.6 * rel,
                  solid_capstyle="round", zorder=1)
    for t, (x, y) in pos.items():
        ax_g.scatter([x], [y], s=260, color="#f0f0f0", edgecolors="#333333", linewidths=1.2, zorder=2)
        ha = "left" if x > 0.15 else "right" if x < -0.15 else "center"
        va = "bottom" if y > 0.15 else "top" if y < -0.15 else "center"
        ax_g.text(1.13 * x, 1.13 * y, t, ha=ha, va=va, fontsize=11, zorder=3)
    ax_g.set_xlim(-1.75, 1.75)
    ax_g.set_ylim(-1.45, 1.45)
    ax_g.set_aspect("equal")
    ax_g.axis("off")
    legend = [
        Line2D([0], [0], color=_POS, lw=4, label="help each other (> 0)"),
        Line2D([0], [0], color=_NEG, lw=4, label="hurt each other (< 0)"),
        Line2D([0], [0], color="#777777", lw=1, label="line width ~ sqrt(|value|)"),
    ]
    ax_g.legend(handles=legend, loc="lower center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False, fontsize=10)
    kind = "symmetric affinity" if not result.symmetric else "affinity"
    ax_g.set_title(
        f"{len(keep)} strongest pairs of the {kind}\n"
        + ("(M[i,j] + M[j,i]) / 2" if not result.symmetric else "M[i,j]")
        + f"; strongest |value| = {peak:.3g}",
        fontsize=11,
    )
    # ---- heat map
    idx = [index[t] for t in order]
    mat = result.matrix[np.ix_(idx, idx)]
    shown = np.where(np.eye(n, dtype=bool), np.nan, mat)
    rows = list(order)
    if result.baseline is not None:  # the momentum-only step's effect, below a gap row
        shown = np.vstack([shown, np.full((1, n), np.nan), result.baseline[idx][None, :]])
        rows += ["", "momentum only"]
    finite = np.abs(shown[np.isfinite(shown)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    nonzero = finite[finite > 0]
    # symmetric-log colours: linear near 0 up to the median magnitude, logarithmic beyond, so
    # a task with outsized values does not wash out every other pair
    linthresh = float(np.median(nonzero)) if nonzero.size else lim
    norm = SymLogNorm(linthresh=min(linthresh, lim), linscale=1.0, vmin=-lim, vmax=lim, base=10)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#d9d9d9")
    im = ax_h.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm)
    if result.baseline is not None:
        ax_h.axhspan(n - 0.5, n + 0.5, color="white", zorder=2)
    ax_h.set_xticks(range(n), order, rotation=45, ha="right", fontsize=10)
    ax_h.set_yticks(range(len(rows)), rows, fontsize=10)
    ax_h.set_xlabel("affected task j (its loss)", fontsize=11)
    ax_h.set_ylabel("source task i (the step is on it)", fontsize=11)
    e_h = _scale(shown)
    if n <= 14:
        for a in range(len(rows)):
            for b in range(n):
                v = shown[a, b]
                if math.isfinite(v):
                    ax_h.text(b, a, _cell(v * 10**e_h), ha="center", va="center", fontsize=7.5,
                              color="white" if abs(norm(v) - 0.5) > 0.35 else "#222222")
    bar = fig.colorbar(im, ax=ax_h, fraction=0.046, pad=0.03)
    lin = min(linthresh, lim)
    ticks = sorted({-lim, -lin, 0.0, lin, lim})
    bar.set_ticks(ticks, labels=[f"{t:+.2g}" if t else "0" for t in ticks])
    bar.set_label("M[i, j]  (blue: i helps j, red: i hurts j; symmetric-log scale)", fontsize=10)
    formula = {
        "lookahead": "Z(i -> j) = 1 - L_j(after a step on i) / L_j(before)",
        "lookahead (own part)": "Z(i -> j) - Z(0 -> j): task i's own part, momentum removed",
    }.get(result.measure, f"{result.measure} matrix")
    notes = ["row i = source, column j = affected; grey = diagonal"]
    extra = (["last row: the same step with a zero gradient (momentum only)"] if result.baseline is not None else [])
    extra += [f"cell text = M[i, j] x 10^{e_h}"] if e_h else []
    if extra:
        notes.append("; ".join(extra))
    ax_h.set_title("\n".join([formula, *notes]), fontsize=10.5)
    data = result.info.get("config") or result.info.get("data") or ""
    fig.suptitle(title or f"Task affinity ({result.measure}){' - ' + data if data else ''}", fontsize=14)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _leaf_order(result: AffinityResult) -> list[str]:
    """Tasks in the dendrogram's leaf order (each merge puts its left cluster before its right)."""
    from automtl.affinity._tree import affinity_dendrogram

    clusters: dict[str, list[str]] = {t: [t] for t in result.tasks}
    for m in affinity_dendrogram(result).merges:
        joined = clusters[m.left[0]] + [t for t in clusters[m.right[0]] if t not in clusters[m.left[0]]]
        for t in joined:
            clusters[t] = joined
    return clusters[result.tasks[0]]
