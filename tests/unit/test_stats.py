"""Statistics against hand-computed values on small fixed matrices."""

from __future__ import annotations

import math

import pytest

from simia.report import stats

T, F = True, False
# Reference level (4 tasks x 2 trials) and a worse level:
#   task   reference   rate    level     rate    d = level - reference
#   t1     [1, 1]      1       [1, 0]    1/2     -1/2
#   t2     [1, 0]      1/2     [0, 0]    0       -1/2
#   t3     [0, 0]      0       [0, 0]    0        0
#   t4     [1, 1]      1       [1, 0]    1/2     -1/2
REF = {"t1": [T, T], "t2": [T, F], "t3": [F, F], "t4": [T, T]}
LVL = {"t1": [T, F], "t2": [F, F], "t3": [F, F], "t4": [T, F]}
WORST = {t: [F, F] for t in REF}  # a third level where nothing succeeds


def test_pass_hat_k_by_hand():
    m = list(REF.values())
    # pass^1 = mean of c/n = (1 + 1/2 + 0 + 1) / 4 = 0.625
    assert stats.pass_hat_k(m, 1) == pytest.approx(0.625)
    # pass^2 = mean of C(c,2)/C(2,2) = (1 + 0 + 0 + 1) / 4 = 0.5
    assert stats.pass_hat_k(m, 2) == pytest.approx(0.5)
    assert stats.pass_hat_k_curve(m) == pytest.approx({1: 0.625, 2: 0.5})
    # one task, n = 4, c = 3: pass^2 = C(3,2)/C(4,2) = 3/6; pass^3 = 1/4; pass^4 = 0
    assert stats.task_pass_hat_k(4, 3, 2) == pytest.approx(0.5)
    assert stats.task_pass_hat_k(4, 3, 3) == pytest.approx(0.25)
    assert stats.task_pass_hat_k(4, 3, 4) == 0.0
    with pytest.raises(ValueError):
        stats.task_pass_hat_k(2, 1, 3)


def test_percentile_linear():
    # positions 0..3; q = 0.25 -> position 0.75 -> 1 + 0.75 * (2 - 1) = 1.75
    assert stats.percentile([4, 1, 3, 2], 0.25) == pytest.approx(1.75)
    assert stats.percentile([4, 1, 3, 2], 1.0) == 4


def test_paired_comparison_by_hand():
    pc = stats.paired_comparison(REF, LVL, resamples=2000, seed=1)
    assert pc.tasks == 4
    assert pc.reference_rate == pytest.approx(0.625) and pc.level_rate == pytest.approx(0.25)
    # mean d = (-1/2 - 1/2 + 0 - 1/2) / 4 = -0.375
    assert pc.mean_diff == pytest.approx(-0.375)
    assert (pc.better, pc.worse, pc.tied) == (0, 3, 1)
    # sign flips of the three nonzero |d| = 1/2 (t3's 0 flips to itself): 8 equally likely
    # sums -3/2 (1 way), -1/2 (3), 1/2 (3), 3/2 (1); observed -3/2
    #   two-sided P(|S| >= 3/2) = 2/8; one-sided P(S <= -3/2) = 1/8
    assert pc.exact
    assert pc.p_two_sided == pytest.approx(0.25)
    assert pc.p_lower == pytest.approx(0.125)
    # SD of d: deviations from -0.375 are -0.125 (x3) and 0.375;
    #   (3 * 0.015625 + 0.140625) / (4 - 1) = 0.0625 -> sd 0.25
    assert pc.sd_diff == pytest.approx(0.25)
    # MDE = (1.959964 + 0.841621) * 0.25 / sqrt(4) = 2.801585 * 0.125 = 0.350198
    assert pc.mde == pytest.approx(0.350198, abs=1e-6)
    assert pc.ci.low <= pc.mean_diff <= pc.ci.high
    assert pc.ci.high <= 0.0  # every resample has mean <= 0: no task got better


def test_paired_comparison_uses_only_common_tasks():
    ref = dict(REF, extra=[T, T])
    pc = stats.paired_comparison(ref, LVL, resamples=200)
    assert pc.tasks == 4 and pc.mean_diff == pytest.approx(-0.375)
    with pytest.raises(ValueError, match="share no task"):
        stats.paired_comparison({"a": [T]}, {"b": [T]})


def test_trend_two_levels_is_the_sign_flip_test():
    tr = stats.trend_test({0: REF, 10: LVL}, resamples=500)
    # slope = mean over tasks of (y_10 - y_0) / 10 per point -> per 10 points: -0.375
    assert tr.slope_per_10pp == pytest.approx(-0.375)
    assert tr.p_decreasing == pytest.approx(0.125) and tr.p_two_sided == pytest.approx(0.25)
    assert tr.exact and tr.tasks == 4 and tr.levels == (0, 10)


def test_trend_three_levels_by_hand():
    tr = stats.trend_test({0: REF, 10: LVL, 20: WORST}, resamples=500)
    # rates y (0 %, 10 %, 20 %): t1 (1, 1/2, 0), t2 (1/2, 0, 0), t3 (0, 0, 0), t4 (1, 1/2, 0)
    # centred levels c = (-10, 0, 10), Sxx = 200; per-task slope = sum c*y / 200:
    #   t1 -10/200, t2 -5/200, t3 0, t4 -10/200 -> mean -25/800 = -0.03125 per point
    assert tr.slope_per_10pp == pytest.approx(-0.3125)
    # permutation null: each task's U_i = sum c_pi(j) y_ij over the 6 orderings of c:
    #   t1, t4: {-10, -5, -5, 5, 5, 10}; t2: {-5, -5, 0, 0, 5, 5}; t3: {0}
    # observed U = -10 - 5 + 0 - 10 = -25 = the minimum, reached only by t1 = -10 (1/6),
    # t4 = -10 (1/6), t2 = -5 (1/3): P(U <= -25) = 1/108; two-sided doubles it (symmetric)
    assert tr.exact
    assert tr.p_decreasing == pytest.approx(1 / 108)
    assert tr.p_two_sided == pytest.approx(2 / 108)
    assert tr.ci.low <= tr.slope_per_10pp <= tr.ci.high


def test_trend_ignores_tasks_missing_at_a_level_and_needs_two_levels():
    lvl = {k: v for k, v in LVL.items() if k != "t3"}
    tr = stats.trend_test({0: REF, 10: lvl}, resamples=100)
    assert tr.tasks == 3
    with pytest.raises(ValueError):
        stats.trend_test({0: REF})


def test_monte_carlo_fallback_is_seeded_and_close(monkeypatch):
    exact = stats.trend_test({0: REF, 10: LVL, 20: WORST}, resamples=100)
    monkeypatch.setattr(stats, "_EXACT_BUDGET", 0)
    mc1 = stats.trend_test({0: REF, 10: LVL, 20: WORST}, resamples=100, permutations=20000,
                           seed=5)
    mc2 = stats.trend_test({0: REF, 10: LVL, 20: WORST}, resamples=100, permutations=20000,
                           seed=5)
    assert not mc1.exact and mc1 == mc2
    assert mc1.p_decreasing == pytest.approx(exact.p_decreasing, abs=0.004)
    # (1 + hits) / (1 + B) is never 0
    assert mc1.p_decreasing > 0


def test_mde_design_by_hand():
    # p = 0.5, 4 trials, 100 tasks: sqrt(2 * 0.25 / 400) = 0.0353553;
    # x (1.959964 + 0.841621) = 0.099050
    assert stats.mde_design(0.5, 100, 4) == pytest.approx(0.099050, abs=1e-6)
    # p = 0 or 1: no trial noise at all
    assert stats.mde_design(1.0, 100, 4) == 0.0
    # from an SD: 2.801585 * 0.3 / sqrt(9) = 0.2801585
    assert stats.mde_from_sd(0.3, 9) == pytest.approx(0.2801585, abs=1e-6)
    with pytest.raises(ValueError):
        stats.mde_design(1.5, 10, 4)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    m = list(REF.values()) + [[T, F], [F, T], [F, F], [T, T]]
    a = stats.bootstrap_pass_hat_k(m, resamples=1000, seed=7)
    b = stats.bootstrap_pass_hat_k(m, resamples=1000, seed=7)
    assert a == b  # same seed, same interval
    for k, e in a.items():
        assert e.low <= e.estimate <= e.high
        assert e.estimate == pytest.approx(stats.pass_hat_k(m, k))
        assert 0.0 <= e.low < e.high <= 1.0
    assert set(a) == {1, 2}


def test_bootstrap_all_success_has_zero_width():
    m = [[T, T, T, T]] * 10
    for e in stats.bootstrap_pass_hat_k(m, resamples=300).values():
        assert e.estimate == e.low == e.high == 1.0
    pc = stats.paired_comparison({"a": [T, T], "b": [T, T]}, {"a": [T, T], "b": [T, T]},
                                 resamples=300)
    # no difference anywhere: d = 0, every sign flip gives 0, p = 1
    assert pc.mean_diff == 0 and pc.ci.low == pc.ci.high == 0 and pc.p_two_sided == 1.0
    assert math.isclose(pc.sd_diff or 0.0, 0.0)
