"""How the affinity graph of the real STAR data relates to the data's own structure.

STAR (Tennessee class-size experiment): 8 regression tasks, the reading and math scores of the
same students in kindergarten and grades 1-3 (``readk..read3``, ``mathk..math3``); about half of
each score is missing (the student was not in the study that year). For every unordered pair of
tasks (28) it compares the symmetric affinity ``(M[i,j] + M[j,i]) / 2`` with

* the correlation of the two tasks' labels (Pearson, training split, students with both labels);
* the overlap of their labelled students (Jaccard index of the two label masks);

by Spearman rank correlation over the 28 pairs, for lookahead affinity (TAG) at k = 1 and at
the default k over five training seeds, with and without the first-epoch warm-up, gradient
cosine, and RSA of single-task networks.
Training: hard parameter sharing, MLP 256-128-64, AdamW lr 1e-3, batch 128, 5 epochs, train
split only; one CPU thread.

    python benchmarks/affinity_star.py [--out runs/affinity/star]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automtl.affinity import (  # noqa: E402
    DEFAULT_EVERY,
    AffinityResult,
    format_affinity,
    measure_affinity,
    select_grouping,
    trees_from_affinity,
)
from automtl.experiment import prepare  # noqa: E402
from benchmarks.affinity_common import spearman, star_config  # noqa: E402


def label_structure(exp: object) -> tuple[np.ndarray, np.ndarray]:
    train = exp.data.train  # type: ignore[attr-defined]
    tasks = exp.data.task_names  # type: ignore[attr-defined]
    n = len(tasks)
    corr, overlap = np.eye(n), np.eye(n)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            if i == j:
                continue
            both = train.mask[a] & train.mask[b]
            ya, yb = train.y[a][both].double().numpy(), train.y[b][both].double().numpy()
            corr[i, j] = np.corrcoef(ya, yb)[0, 1]
            overlap[i, j] = float(both.sum()) / float((train.mask[a] | train.mask[b]).sum())
    return corr, overlap


def upper(m: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(len(m), k=1)
    return m[i, j]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/affinity/star", help="where the results are saved (JSON, GraphML, DOT, PNG)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = star_config()
    exp = prepare(config)
    tasks = exp.data.task_names
    corr, overlap = label_structure(exp)
    print("Label correlation (train split, students with both labels):")
    print("        " + " ".join(f"{t:>6}" for t in tasks))
    for t, row in zip(tasks, corr):
        print(f"{t:>7} " + " ".join(f"{v:+6.2f}" for v in row))
    print()

    runs: list[tuple[str, AffinityResult]] = []
    start = time.perf_counter()
    runs.append(("lookahead k=1, warm-up 1 epoch, seed 0", measure_affinity(config, every=1, experiment=exp)))
    runs.append(("lookahead k=1, no warm-up, seed 0", measure_affinity(config, every=1, warmup_epochs=0, experiment=exp)))
    for seed in range(5):
        cfg = dataclasses.replace(config, seed=seed)
        runs.append((f"lookahead k={DEFAULT_EVERY} (default), seed {seed}", measure_affinity(cfg, experiment=exp)))
    runs.append((f"lookahead k={DEFAULT_EVERY}, no warm-up, seed 0", measure_affinity(config, warmup_epochs=0, experiment=exp)))
    runs.append(("cosine k=1, seed 0", measure_affinity(config, measure="cosine", every=1, experiment=exp)))
    runs.append((f"cosine k={DEFAULT_EVERY}, seed 0", measure_affinity(config, measure="cosine", experiment=exp)))
    runs.append(("rsa (single-task nets), seed 0", measure_affinity(config, measure="rsa", experiment=exp)))
    print(f"(all measurements: {time.perf_counter() - start:.0f} s)\n")

    print("| measure | measurements | Spearman vs label correlation | Spearman vs label overlap | same-grade pairs: mean | other pairs: mean |")
    print("|---|---|---|---|---|---|")
    grade = {t: t[-1] for t in tasks}
    same = np.array([[grade[a] == grade[b] and a != b for b in tasks] for a in tasks])
    iu = np.triu_indices(len(tasks), k=1)
    for name, r in runs:
        variants = [(name, r.symmetrized())]
        if r.baseline is not None:  # task i's own part: M[i, j] minus the momentum-only step's Z_{0->j}
            own = r.matrix - r.baseline[None, :]
            variants.append((name + ", own part (M - momentum)", (own + own.T) / 2))
        for label, s in variants:
            print(
                f"| {label} | {int(r.cost['measurements'])} | {spearman(upper(s), upper(corr)):+.2f} | "
                f"{spearman(upper(s), upper(overlap)):+.2f} | {s[same].mean():+.2e} | {s[iu][~same[iu]].mean():+.2e} |"
            )
    whole = runs[1][1]
    print("\nPer epoch (lookahead k=1, no warm-up, seed 0), Spearman vs label correlation: "
          + ", ".join(f"epoch {e}: {spearman(upper((h + h.T) / 2), upper(corr)):+.2f}" for e, h in zip(whole.history_epochs, whole.history)))
    seeds = [r for name, r in runs if "(default)" in name]
    pairs = [(a, b) for ia, a in enumerate(seeds) for b in seeds[ia + 1 :]]
    stab = [spearman(upper(a.symmetrized()), upper(b.symmetrized())) for a, b in pairs]
    print(f"Seed stability (lookahead k={DEFAULT_EVERY}): Spearman between two seeds' pair affinities, median "
          f"{np.median(stab):+.2f} (range {min(stab):+.2f} to {max(stab):+.2f}) over {len(pairs)} pairs of seeds")
    print(f"  Spearman vs label correlation over the {len(seeds)} seeds: median "
          f"{np.median([spearman(upper(r.symmetrized()), upper(corr)) for r in seeds]):+.2f}")
    owns = [r.without_momentum() for r in seeds]
    stab = [spearman(upper(a.symmetrized()), upper(b.symmetrized())) for ia, a in enumerate(owns) for b in owns[ia + 1 :]]
    print(f"Seed stability of the own part (M - momentum, k={DEFAULT_EVERY}): median {np.median(stab):+.2f} "
          f"(range {min(stab):+.2f} to {max(stab):+.2f}); Spearman vs label correlation, median "
          f"{np.median([spearman(upper(r.symmetrized()), upper(corr)) for r in owns]):+.2f}")
    k1 = runs[0][1]
    print("Lookahead default k vs k=1 (same seed 0): Spearman "
          f"{spearman(upper(seeds[0].symmetrized()), upper(k1.symmetrized())):+.2f}")
    print(f"Spearman, label correlation vs label overlap: {spearman(upper(corr), upper(overlap)):+.2f}\n")

    print(format_affinity(k1))
    print()
    for k in (2, 3, 4):
        g = select_grouping(k1.matrix, tasks, k)
        print(f"best grouping, at most {k} groups: {g.groups}  total affinity {g.score:+.4f} "
              f"({'exact' if g.exact else 'heuristic'}, {g.seconds * 1000:.1f} ms)")
        own = select_grouping(seeds[0].without_momentum().matrix, tasks, k)
        print(f"  own part (M - momentum) at the default k, seed 0: {own.groups}, total affinity {own.score:+.4f}")
    print("\ncandidate trees (MLP: 3 blocks, branching points 0..3):")
    for tree in trees_from_affinity(k1, 3, max_groups=3):
        print(f"  [{tree.compact()}]")
    out = Path(args.out)
    k1.save(out)
    try:
        from automtl.affinity import plot_affinity

        plot_affinity(k1, out / "star_affinity.png", title="Task affinity (lookahead, k=1) - STAR, MLP, 5 epochs")
    except ImportError as exc:
        print(exc)
    print(f"\nsaved to {out}/")


if __name__ == "__main__":
    main()
