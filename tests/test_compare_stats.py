"""The comparison's interval (rakd.compare.stats): arithmetic by hand, and coverage by simulation for 3 seeds."""

import dataclasses
import math

import numpy as np
import pytest

from rakd.compare import Job
from rakd.compare.stats import difference_interval, leaders, runs_by_method
from rakd.schema import encode_answers


def test_the_interval_by_hand():
    # 2 seeds x 4 problems each. Seed means: ours 0.75, 0.5 (var 1/32), theirs 0.25, 0.25 (var 0).
    ours = [[1, 1, 1, 0], [1, 0, 1, 0]]
    theirs = [[0, 1, 0, 0], [0, 1, 0, 0]]
    # per-problem difference of seed-averaged correctness: 1, -0.5, 1, 0 -> mean 0.375, var (ddof 1) 0.5625
    interval = difference_interval(ours, theirs)
    seeds, problems = (1 / 32) / 2, 0.5625 / 4
    variance = seeds + problems
    df = variance**2 / (seeds**2 / 1 + problems**2 / 3)
    from scipy.stats import t

    half = t.ppf(0.975, df) * math.sqrt(variance)
    assert interval.point == pytest.approx(0.375)
    assert interval.df == pytest.approx(df)
    assert (interval.low, interval.high) == pytest.approx((0.375 - half, 0.375 + half))


def test_one_seed_has_no_interval_and_equal_methods_straddle_zero():
    one = difference_interval([[1, 0, 1]], [[0, 0, 1], [1, 0, 1]])
    assert math.isnan(one.low) and "n/a" in one.format() and not one.excludes_zero
    same = [[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]]
    assert difference_interval(same, same).low < 0 < difference_interval(same, same).high
    with pytest.raises(ValueError, match="different shapes"):
        difference_interval([[1, 0]], [[1, 0, 1]])


def simulate(rng, difficulty, shift, seed_sd, seeds):
    """Per-problem 0/1 results of `seeds` training runs of a method whose log-odds on a problem are the problem's
    plus `shift` plus a seed effect."""
    effects = rng.normal(0.0, seed_sd, size=(seeds, 1))
    p = 1.0 / (1.0 + np.exp(-(difficulty[None, :] + shift + effects)))
    return (rng.random(p.shape) < p).astype(np.float64)


def population_accuracy(rng, shift, seed_sd):
    """The method's expected accuracy over problems and seeds (what an interval should cover)."""
    difficulty = rng.normal(0.3, 1.5, size=20_000)
    effects = rng.normal(0.0, seed_sd, size=(400, 1))
    return float((1.0 / (1.0 + np.exp(-(difficulty[None, :] + shift + effects)))).mean())


def test_the_leader_and_the_methods_level_with_it():
    enc = lambda bits: encode_answers([bool(b) for b in bits])  # noqa: E731
    answers = {
        ("grpo", 0): [1, 1, 1, 1, 0, 1], ("grpo", 1): [1, 1, 1, 0, 1, 1],
        ("opd", 0): [1, 1, 1, 0, 0, 1], ("opd", 1): [1, 1, 0, 1, 0, 1],
        ("rakd_lower", 0): [0] * 6, ("rakd_lower", 1): [0] * 6,
    }  # fmt: skip
    jobs = [Job(method, seed, 1e-4, 0.5, 1.0) for method, seed in answers]
    rows = [  # as rakd.compare.record.read_comparison reads them back
        {**dataclasses.asdict(job), "name": job.name, "greedy_correct": enc(answers[job.method, job.seed])}
        for job in jobs
    ]
    runs = runs_by_method(rows)
    assert runs["grpo"] == [[1, 1, 1, 1, 0, 1], [1, 1, 1, 0, 1, 1]] and set(runs) == {"grpo", "opd", "rakd_lower"}
    # grpo 10/12, opd 8/12: within noise of 2 seeds x 6 problems; all-wrong rakd_lower is not
    assert leaders(runs) == ("grpo", ("opd",))
    other = Job("grpo", 0, 1e-4, 0.5, 1.0, lr_in_variant=True)  # another variant of grpo
    with pytest.raises(ValueError, match="several variants of one method"):
        runs_by_method([*rows, {**dataclasses.asdict(other), "name": "x", "greedy_correct": enc([1] * 6)}])


@pytest.mark.parametrize("seed_sd", [0.05, 0.3])
def test_three_seeds_cover_the_true_difference(seed_sd):
    """Problems drawn from a population, 3 seeds per method, training noise small or large against the problem
    sample's: the 95% interval covers the population difference at least 93% of 400 trials (binomial s.e. 1.1
    points). A normal interval over the same variance (what the bootstrap's quantiles amount to) falls short
    when the seeds dominate."""
    rng = np.random.default_rng(7)
    truth = population_accuracy(rng, 0.4, seed_sd) - population_accuracy(rng, 0.0, seed_sd)
    covered = normal_covered = 0
    trials = 400
    for _ in range(trials):
        difficulty = rng.normal(0.3, 1.5, size=300)
        ours, theirs = simulate(rng, difficulty, 0.4, seed_sd, 3), simulate(rng, difficulty, 0.0, seed_sd, 3)
        interval = difference_interval(ours, theirs)
        covered += interval.low <= truth <= interval.high
        half = (interval.high - interval.point) / __import__("scipy").stats.t.ppf(0.975, interval.df) * 1.96
        normal_covered += interval.point - half <= truth <= interval.point + half
    assert covered / trials >= 0.93, covered / trials
    if seed_sd >= 0.3:
        assert normal_covered / trials < covered / trials


def test_the_step0_diagnostic_by_hand():
    """TRRD at θ = θ_old: log ρ = (1 − α) clamp(log π − log π_T, −c, c) with α 0.5, c 1. Row 1 (A > 0): gaps 0,
    ln 10 (clamped to 1: ρ = e^0.5 = 1.65 > 1.28, no gradient) and ln(.5/.9) = −0.59 (ρ = 0.75); row 2 (A < 0): gaps
    0 and −0.59 (ρ = 0.75 < 0.8: no gradient)."""
    import torch

    from rakd.compare.diagnostic import clip_shares
    from rakd.train.config import LossParams

    ln = math.log
    own = torch.tensor([[ln(0.5), ln(0.5), ln(0.5)], [ln(0.5), ln(0.5), 0.0]])
    theirs = torch.tensor([[ln(0.5), ln(0.05), ln(0.9)], [ln(0.5), ln(0.9), 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    shares = clip_shares(own, theirs, torch.tensor([1.0, -1.0]), mask, LossParams())
    assert shares["tokens"] == 5 and shares["gap_median"] == pytest.approx(0.0, abs=1e-6)
    assert shares["clamped"] == pytest.approx(1 / 5)
    assert shares["positive_no_gradient"] == pytest.approx(1 / 3) and shares["negative_no_gradient"] == 0.5
    assert shares["no_gradient"] == pytest.approx(2 / 5)
