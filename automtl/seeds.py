"""Every seed a search uses, derived from the study seed in one place.

A search trains many networks: screening trials, the single-task baselines, the confirmation
runs; several workers each run a sampler. Each gets its own seed, derived from the study seed
and a label by a hash, so that seeds of different roles never collide, a seeded search is
reproducible, and the confirmation seeds are *fresh* (no screening run used them) and *paired*
(confirmation seed ``i`` is the same for every design). This module knows nothing of torch or
optuna.
"""

from __future__ import annotations

import hashlib

__all__ = ["baseline_tuning_seed", "confirmation_seeds", "derive_seed", "sampler_seed", "trial_seed"]

_MASK = (1 << 31) - 1  # seeds stay in [0, 2**31), valid for torch, numpy and Optuna's samplers


def derive_seed(study_seed: int, *label: object) -> int:
    """A seed in ``[0, 2**31)`` determined by ``study_seed`` and ``label`` (SHA-256 of both)."""
    text = "/".join(str(part) for part in (study_seed, *label))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & _MASK


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The training seed of screening trial ``trial_number``."""
    return derive_seed(study_seed, "trial", trial_number)


def confirmation_seeds(study_seed: int, n: int) -> list[int]:
    """The ``n`` training seeds of the confirmation stage; seed ``i`` is shared by every design."""
    return [derive_seed(study_seed, "confirm", i) for i in range(n)]


def baseline_tuning_seed(study_seed: int) -> int:
    """The training seed of the single-task networks that choose each task's learning rate."""
    return derive_seed(study_seed, "baseline-tuning")


def sampler_seed(study_seed: int, worker: int) -> int:
    """The sampler seed of worker ``worker`` (0 for a search run in one process): the study seed
    itself for worker 0 when it is in range, else a derived one."""
    if worker == 0 and 0 <= study_seed <= _MASK:
        return study_seed
    return derive_seed(study_seed, "sampler", worker)
