"""Every seed of a search, derived from the study seed (:mod:`automtl.seeds`)."""

from __future__ import annotations

import hashlib

import optuna
import pytest

from automtl.seeds import (
    baseline_tuning_seed,
    confirmation_seeds,
    derive_seed,
    sampler_seed,
    trial_seed,
)

STUDY_SEEDS = [0, 1, 42, 2**31 - 1, 2**40]


def _all_seeds(study_seed: int) -> dict[str, int]:
    seeds = {f"trial {i}": trial_seed(study_seed, i) for i in range(300)}
    seeds |= {f"confirm {i}": s for i, s in enumerate(confirmation_seeds(study_seed, 10))}
    seeds |= {f"sampler {w}": sampler_seed(study_seed, w) for w in range(1, 9)}
    if study_seed >= 2**31:  # else worker 0's sampler seed is the study seed, which a trial seed may equal
        seeds["sampler 0"] = sampler_seed(study_seed, 0)
    seeds["baseline tuning"] = baseline_tuning_seed(study_seed)
    return seeds


@pytest.mark.parametrize("study_seed", STUDY_SEEDS)
def test_seeds_are_in_range_and_distinct_across_roles_and_indices(study_seed: int) -> None:
    seeds = _all_seeds(study_seed)
    assert all(0 <= s < 2**31 for s in seeds.values())
    assert len(set(seeds.values())) == len(seeds)


@pytest.mark.parametrize("study_seed", STUDY_SEEDS)
def test_seeds_are_deterministic_sha256_of_seed_and_label(study_seed: int) -> None:
    assert _all_seeds(study_seed) == _all_seeds(study_seed)
    # the documented derivation, computed here independently
    text = f"{study_seed}/trial/7".encode()
    assert trial_seed(study_seed, 7) == int.from_bytes(hashlib.sha256(text).digest()[:8], "big") % 2**31
    text = f"{study_seed}/confirm/2".encode()
    assert confirmation_seeds(study_seed, 3)[2] == int.from_bytes(hashlib.sha256(text).digest()[:8], "big") % 2**31


def test_confirmation_seeds_are_a_prefix_of_more_seeds() -> None:
    # seed i is the same whatever the number of confirmation seeds: paired across designs and reruns
    assert confirmation_seeds(5, 3) == confirmation_seeds(5, 8)[:3]


def test_different_study_seeds_give_different_seeds() -> None:
    assert trial_seed(0, 3) != trial_seed(1, 3)
    assert set(confirmation_seeds(0, 5)).isdisjoint(confirmation_seeds(1, 5))


@pytest.mark.parametrize("study_seed", [s for s in STUDY_SEEDS if s < 2**31])
def test_the_first_worker_s_sampler_takes_the_study_seed(study_seed: int) -> None:
    assert sampler_seed(study_seed, 0) == study_seed
    assert sampler_seed(study_seed, 1) != study_seed


@pytest.mark.parametrize("study_seed", [2**31, 2**32, 2**40])
def test_a_study_seed_out_of_range_gives_a_sampler_seed_in_range(study_seed: int) -> None:
    # search.seed is any integer >= 0; numpy (under Optuna's samplers) refuses seeds >= 2**32
    seed = sampler_seed(study_seed, 0)
    assert 0 <= seed < 2**31 and seed == sampler_seed(study_seed, 0)
    optuna.samplers.RandomSampler(seed=seed)


def test_derive_seed_separates_its_label_parts() -> None:
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", "2")  # labels are read as text
    assert derive_seed(1, "confirm", 1) != derive_seed(1, "confirm1")
