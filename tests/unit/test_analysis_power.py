"""simia.analysis power planner, simulator and settings: the planner against the notes'
closed form, the simulator's truth, a small calibration smoke test (the full study is
benchmarks/bench_calibration.py), and AnalysisSettings as run settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from simia.analysis import analyze, plan_power, plan_power_for_run
from simia.analysis.power import slope_power
from simia.analysis.simulate import (SimulationModel, _mean_expit, logit_parameters,
                                     run_pass1_sd, simulate_experiment, simulated_task_ids,
                                     simulated_test_tasks)
from simia.analysis.telecom_split import SPLIT_SIZES, TELECOM_TEST_TASKS
from simia.errors import ConfigError
from simia.settings.analysis import AnalysisSettings
from simia.settings.fields import run_settings

LEVELS = (0, 5, 10, 20)
SXX = 2.1875  # (x / 10 - mean)^2 summed: 0/5/10/20 -> 218.75 in points^2


def test_slope_power_against_the_noncentral_t_by_hand():
    # 2 runs per level: df 6, ncp = 0.05 * sqrt(2 * 2.1875) / 0.03
    ncp = 0.05 * math.sqrt(2 * SXX) / 0.03
    expect = stats.nct.sf(stats.t.ppf(0.95, 6), 6, ncp)
    assert slope_power(2, LEVELS, 0.03, 0.05) == pytest.approx(expect)
    assert slope_power(2, LEVELS, 0.03, -0.05) == pytest.approx(expect)  # size, not sign
    powers = [slope_power(r, LEVELS, 0.03, 0.02) for r in range(2, 8)]
    assert powers == sorted(powers) and powers[0] > 0.05
    two = slope_power(3, LEVELS, 0.03, 0.02, alternative="two-sided")
    assert two < slope_power(3, LEVELS, 0.03, 0.02)


def test_plan_with_a_given_sd_matches_the_notes_example():
    # notes: a drop of 0.10 over 20 points with sigma 0.03 needs r ~ 2
    plan = plan_power(LEVELS, 114, 4, AnalysisSettings(smallest_effect_per_10pp=0.05),
                      sd_pass1=0.03)
    assert plan.replicates_needed == 2 and plan.power_by_replicates["1"] == 0.0
    df = 2 * 4 - 2
    closed = ((stats.t.ppf(0.95, df) + stats.t.ppf(0.8, df)) ** 2 * 0.03 ** 2
              / (0.05 ** 2 * SXX))
    assert plan.formula_replicates == pytest.approx(closed)
    # sigma 0.05: r ~ 4 in the notes
    plan = plan_power(LEVELS, 114, 4, AnalysisSettings(smallest_effect_per_10pp=0.05),
                      sd_pass1=0.05)
    assert plan.replicates_needed in (4, 5)
    assert "training runs per level" in plan.summary
    with pytest.raises(ConfigError):
        plan_power([10], 114, 4)


def test_plan_from_the_model_and_from_a_measured_analysis(tmp_path):
    plan = plan_power(LEVELS, 114, 4)  # literature defaults: run SD 0.2, task x run 0.5
    assert 0.025 < plan.sd_pass1 < 0.045 and plan.sd_runs_only < plan.sd_pass1
    assert plan.assumptions["run_sd_logit"] == 0.2 and plan.replicates_needed == 3
    # more run-to-run variance needs more runs
    noisy = plan_power(LEVELS, 114, 4, AnalysisSettings(run_sd_logit=0.4))
    assert noisy.sd_pass1 > plan.sd_pass1 and noisy.replicates_needed > 3
    # a measured run_to_run (as an A/A analysis writes it)
    measured = tmp_path / "aa.json"
    measured.write_text('{"run_to_run": {"sd_pass1": 0.02, "df": 4, "tasks": 114, '
                        '"trials": 4, "source": "measured: pooled within levels"}}')
    plan = plan_power(LEVELS, 114, 4, AnalysisSettings(run_variance_from=str(measured)))
    assert plan.sd_pass1 == 0.02 and "measured in" in plan.sd_source
    assert plan.one_run_per_level_power == pytest.approx(
        slope_power(1, LEVELS, 0.02, 0.04, df=4))
    assert plan_power_for_run(LEVELS, 4, task_split="test").tasks == 40
    assert plan_power_for_run(LEVELS, 4, num_tasks=20).tasks == 20


def test_simulator_truth_and_shapes():
    model = SimulationModel(tasks=30, trials=3, replicates=2, slope_per_10pp=-0.04)
    mu, beta = logit_parameters(model)
    assert float(_mean_expit(mu, model.total_sd)) == pytest.approx(0.26)
    x = np.array([0, 0.5, 1, 2])
    means = _mean_expit(mu + beta * x, model.total_sd)
    xc = x - x.mean()
    assert float(np.sum(xc * means) / np.sum(xc * xc)) == pytest.approx(-0.04)
    table, truth = simulate_experiment(model, np.random.default_rng(0))
    assert table.status.shape == (8, 30, 3) and -0.08 < truth < 0
    null, truth0 = simulate_experiment(model.with_(slope_per_10pp=0.0), np.random.default_rng(0))
    assert truth0 == pytest.approx(0.0, abs=1e-12)
    infra, _ = simulate_experiment(model.with_(infra_level=20), np.random.default_rng(0))
    assert (infra.status[infra.levels == 20] < 0).all()
    assert analyze(infra, secondary=False).verdict == "invalid"
    ids = simulated_task_ids(114)
    assert sum(i.startswith("[mms_issue]") for i in ids) == 49
    assert len(simulated_test_tasks(ids)) == 40
    sd, runs_only = run_pass1_sd(model, task_sets=16, runs=16)
    assert 0 < runs_only < sd


def test_small_calibration_smoke():
    """60 null experiments with 2 runs per level: the verdict claims a drop about 5 % of
    the time (loose bound: the benchmark measures it precisely)."""
    rng = np.random.default_rng(7)
    model = SimulationModel(tasks=40, trials=2, replicates=2)
    claims = covered = 0
    for _ in range(60):
        table, truth = simulate_experiment(model, rng)
        res = analyze(table, secondary=False)
        claims += res.verdict == "decrease"
        s = res.slope_per_10pp
        covered += s.ci_low <= truth <= s.ci_high
    assert claims <= 9 and covered >= 51
    one_run = simulate_experiment(model.with_(replicates=1), rng)[0]
    assert analyze(one_run, secondary=False).verdict == "insufficient"


def test_analysis_settings_are_run_settings_with_fresh_names():
    from simia.settings import defined_settings

    s = AnalysisSettings()
    assert (s.alternative, s.alpha, s.primary_endpoint) == ("less", 0.05,
                                                           "pass^1 slope per 10 points")
    params = {r.param for r in run_settings(AnalysisSettings)}
    assert {"analysis_alternative", "analysis_alpha", "smallest_effect",
            "run_variance_from"} <= params
    defined = defined_settings()  # registered: each is a DAG Param defined here only
    assert all(defined[name].model is AnalysisSettings for name in params)
    assert AnalysisSettings.section == "Analysis"
    with pytest.raises(ValueError):
        AnalysisSettings(alternative="bigger")
    with pytest.raises(ValueError):
        AnalysisSettings(alpha=0.7)


def test_split_sizes_and_test_tasks():
    assert len(TELECOM_TEST_TASKS) == SPLIT_SIZES["test"] == 40
    assert len(set(TELECOM_TEST_TASKS)) == 40


@pytest.mark.reference
def test_test_split_is_tau2s(reference_data):
    import json

    split = json.loads((reference_data / "tau2-telecom" / "split_tasks.json").read_text())
    assert list(TELECOM_TEST_TASKS) == split["test"]
    assert {k: len(split[k]) for k in SPLIT_SIZES} == SPLIT_SIZES
