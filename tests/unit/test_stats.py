"""Statistics against hand-computed values on small fixed matrices."""

from __future__ import annotations


import pytest

from simia.report import stats

T, F = True, False
# 4 tasks x 2 trials:
#   task   trials   rate
#   t1     [1, 1]   1
#   t2     [1, 0]   1/2
#   t3     [0, 0]   0
#   t4     [1, 1]   1
REF = {"t1": [T, T], "t2": [T, F], "t3": [F, F], "t4": [T, T]}


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
