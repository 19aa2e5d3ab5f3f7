"""simia.analysis: run-aware verdict against hand-computed values on small matrices, the
missing-data rules, secondary outcomes (Holm), p formatting, and ``simia analyze`` on the
fixture results files (tests/fixtures/analysis, made by make_fixtures.py there).

Fixture design: 4 tasks x 2 trials; levels 0 and 10, two runs each; per-run pass^1
0:r1 0.75, 0:r2 0.625, 10:r1 0.5, 10:r2 0.375.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from simia.analysis import analyze, analyze_runs, format_p, parse_spec, read_runs
from simia.analysis.inference import RunVariance, lack_of_fit, pooled_run_sd, slope_test
from simia.analysis.outcomes import (INFRA, MISSING, OutcomeTable, RunOutcomes, RunSpec,
                                     issue_type, persona)
from simia.analysis.secondary import holm, level_contrasts
from simia.cli import main
from simia.errors import InputError
from simia.settings.analysis import AnalysisSettings

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "analysis"
SPLIT = str(FIX / "split_tasks.json")
A = "[mobile_data_issue]airplane_mode_on|data_mode_off[PERSONA:Easy]"
B = "[service_issue]line_suspended|overdue_bill[PERSONA:None]"
C = "[mms_issue]apn_settings_wrong[PERSONA:Hard]"
D = "[mobile_data_issue]roaming_disabled_abroad[PERSONA:None]"


def spec(level: int, rep: str, name: str | None = None) -> str:
    return f"{level}:{rep}={FIX / ((name or f'{level}_{rep}') + '.json')}"


BASIC = [spec(0, "r1"), spec(0, "r2"), spec(10, "r1"), spec(10, "r2")]
# hand-computed for BASIC: y = (.75, .625, .5, .375) on x = (0, 0, 1, 1) (per 10 points)
SLOPE = -0.25  # (0.5 + 0.375)/2 - (0.75 + 0.625)/2
S2 = 4 * 0.0625 ** 2 / 2  # residual variance: four residuals of +-0.0625, df 2
SE = math.sqrt(S2 / 1.0)  # Sxx = 1
T = SLOPE / SE  # -2 sqrt(2)


def t2_cdf(t: float) -> float:
    """Student t with 2 df: F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def t2_quantile(p: float) -> float:
    """Student t with 2 df: t_p = (2p - 1) / sqrt(2 p (1 - p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


# --------------------------------------------------------------------------- formatting

@pytest.mark.parametrize("p, text", [
    (0.046, "0.046"), (0.054, "0.054"), (0.05, "0.050"), (0.5, "0.50"), (1.0, "1.0"),
    (0.99999, "1.0"), (0.0995, "0.10"), (0.00012345, "0.00012"), (0.0001, "0.00010"),
    (5e-5, "<0.0001"), (0.0, "<0.0001"), (None, "n/a"), (math.nan, "n/a")])
def test_format_p_two_significant_digits(p, text):
    assert format_p(p) == text


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, None, 0.8]) == pytest.approx([0.4, None, 0.8])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


# --------------------------------------------------------------------------- inputs

def test_parse_spec():
    assert parse_spec("10:r2=a/b/results.json") == RunSpec(10.0, "r2", "a/b/results.json")
    assert parse_spec("2.5:seed-1=x=y.json") == RunSpec(2.5, "seed-1", "x=y.json")
    for bad in ("10=a.json", "ten:r1=a.json", "10:r1", "10:=a.json", ":r1=a.json"):
        with pytest.raises(InputError, match="LEVEL:REPLICATE=PATH"):
            parse_spec(bad)


def test_task_id_strata():
    assert (issue_type(A), persona(A)) == ("mobile_data_issue", "Easy")
    assert (issue_type(C), persona(C)) == ("mms_issue", "Hard")
    assert (issue_type("plain"), persona("plain")) == ("unknown", "unknown")


def test_fixture_table_per_run_outcomes_by_hand():
    table = read_runs(parse_spec(s) for s in BASIC)
    assert table.task_ids == (A, B, C, D) and table.trials == 2
    assert table.levels.tolist() == [0, 0, 10, 10]
    assert table.pass1().tolist() == [0.75, 0.625, 0.5, 0.375]
    # pass^2 per task: 1 when both trials succeed
    assert [table.pass_hat_k(i)[2] for i in range(4)] == [0.75, 0.5, 0.25, 0.25]
    # two assertions per simulation: failures meet one at level 0, none at level 10;
    # 0:r2 tasks: A 1, B 1, C (1 + .5)/2, D .5
    assert table.env_met_rate().tolist() == [0.875, 0.8125, 0.5, 0.375]
    # the write check of task B matches when the task succeeds (read checks ignored)
    assert table.write_match_rate().tolist() == [1.0, 1.0, 0.5, 0.5]
    assert table.termination_rate("agent_stop").tolist() == [0.25, 0.375, 0.0, 0.0]
    assert table.termination_rate("max_steps").tolist() == [0.0, 0.0, 0.5, 0.625]
    tidy = table.tidy()
    assert len(tidy) == 32 and tidy["success"].sum() == 18
    assert set(tidy["persona"]) == {"Easy", "None", "Hard"}


def test_excluded_cells_are_missing_not_failures():
    table = read_runs([parse_spec(spec(10, "r2", "10_r2_infra"))])
    assert table.status[0, 2].tolist() == [1, MISSING]  # C: trial 1 has no simulation
    assert table.status[0, 3].tolist() == [0, INFRA]
    assert table.task_rates()[0].tolist() == [1.0, 0.5, 1.0, 0.0]
    assert table.pass1().tolist() == [0.625]
    assert table.pass1(excluded_as_failure=True).tolist() == [0.5]
    assert table.pass_hat_k(0) == {1: 0.625, 2: 0.5}  # pass^2 over A (1) and B (0) only


def test_union_of_tasks_and_trials_missing_cells():
    def run(level: float, rep: str, tasks: tuple[str, ...], trials: int) -> RunOutcomes:
        shape = (len(tasks), trials)
        return RunOutcomes(RunSpec(level, rep, None), tasks, trials,
                           np.ones(shape, dtype=np.int8), np.full(shape, math.nan),
                           np.zeros(shape, int), np.zeros(shape, int),
                           np.full(shape, "user_stop", dtype=object))
    table = OutcomeTable.from_runs([run(10, "r1", (A, B), 2), run(0, "r1", (B, C), 3)])
    assert table.task_ids == (B, C, A) and table.trials == 3  # sorted by level: 0 first
    assert (table.status[1] == MISSING).sum() == 3 + 2  # task C (3 trials) + trial 2 of A, B
    with pytest.raises(InputError, match="given twice"):
        OutcomeTable.from_runs([run(0, "r1", (A,), 1), run(0, "r1", (B,), 1)])


# --------------------------------------------------------------------------- statistics

def test_slope_test_by_hand():
    x, y = [0, 0, 10, 10], [0.75, 0.625, 0.5, 0.375]
    s = slope_test(x, y, alternative="less", alpha=0.05)
    assert s.estimate == pytest.approx(SLOPE)
    assert s.se == pytest.approx(SE) and s.df == 2 and s.t == pytest.approx(-2 * math.sqrt(2))
    assert s.p_value == pytest.approx(t2_cdf(T))  # 0.0528
    q = t2_quantile(0.975)
    assert (s.ci_low, s.ci_high) == pytest.approx((SLOPE - q * SE, SLOPE + q * SE))
    assert s.bound == pytest.approx(SLOPE - t2_quantile(0.95) * SE)
    assert slope_test(x, y, alternative="greater").p_value == pytest.approx(1 - t2_cdf(T))
    assert slope_test(x, y, alternative="two-sided").p_value == pytest.approx(2 * t2_cdf(T))
    # NaN runs (no judged cell) are dropped; one level: no slope
    s = slope_test([0, 0, 10, 10, 20], y + [math.nan])
    assert s.estimate == pytest.approx(SLOPE) and s.df == 2
    assert slope_test([0, 0], [0.5, 0.6]).estimate is None
    # runs that all score the same leave nothing to test against (not "no residual df")
    flat = slope_test([0, 0, 10, 10], [0.5] * 4)
    assert flat.p_value is None and flat.estimate == pytest.approx(0)
    assert "no variation between runs" in flat.variance


def test_slope_test_with_supplied_variance_by_hand():
    # one run per level; SD 0.1 on 4 df: se = 0.1 / sqrt(Sxx), Sxx = 0.5 for x = 0, 1
    s = slope_test([0, 10], [0.6, 0.4], variance=RunVariance(0.1, 4.0))
    assert s.estimate == pytest.approx(-0.2)
    assert s.se == pytest.approx(0.1 / math.sqrt(0.5)) and s.df == 4
    # t = -sqrt(2) on 4 df: F(t) = 1/2 + (3/4) u (1 - u^2 / 3), u = t / sqrt(t^2 + 4)
    t = -math.sqrt(2)
    u = t / math.sqrt(t * t + 4)
    assert s.t == pytest.approx(t)
    assert s.p_value == pytest.approx(0.5 + 0.75 * u * (1 - u * u / 3))


def test_pooled_sd_and_lack_of_fit_by_hand():
    sd, df = pooled_run_sd([0, 0, 10, 10], [0.75, 0.625, 0.5, 0.375])
    assert (sd, df) == (pytest.approx(SE), 2.0)
    assert math.isnan(pooled_run_sd([0, 10], [0.5, 0.6])[0])
    # a V: level means .55 / .35 / .55 on a flat line at 2.9 / 6; six deviations of +-0.05
    x, y = [0, 0, 10, 10, 20, 20], [0.5, 0.6, 0.3, 0.4, 0.5, 0.6]
    mean = 2.9 / 6
    ss_lof = 2 * ((0.55 - mean) ** 2 + (0.35 - mean) ** 2 + (0.55 - mean) ** 2)
    f = (ss_lof / 1) / (6 * 0.05 ** 2 / 3)
    lof = lack_of_fit(x, y)
    assert lof.f == pytest.approx(f) and f == pytest.approx(32 / 3)
    assert (lof.df_num, lof.df_den) == (1.0, 3.0)
    from scipy import stats

    assert lof.p_value == pytest.approx(2 * stats.t.sf(math.sqrt(f), 3))  # F(1, 3) = t_3^2
    assert lack_of_fit([0, 10], [0.1, 0.2]).p_value is None


def test_level_contrasts_runs_as_unit_holm():
    c, = level_contrasts([0, 0, 10, 10], [0.75, 0.625, 0.5, 0.375])
    assert c.estimate == pytest.approx(SLOPE)
    assert c.se == pytest.approx(SE * math.sqrt(1 / 2 + 1 / 2)) and c.df == 2
    assert c.p_value == pytest.approx(2 * t2_cdf(T)) and c.p_holm == c.p_value
    rows = level_contrasts([0, 0, 10, 10, 20, 20], [0.5, 0.6, 0.3, 0.4, 0.5, 0.6])
    assert [r.level for r in rows] == [10, 20]
    assert [r.estimate for r in rows] == pytest.approx([-0.2, 0.0])
    assert [r.p_holm for r in rows] == pytest.approx(holm([r.p_value for r in rows]))
    assert level_contrasts([0, 10], [0.5, 0.4])[0].p_value is None  # no df, no variance


# --------------------------------------------------------------------------- verdicts

def test_fixture_verdict_no_effect_worded_with_the_bound():
    res = analyze_runs(BASIC, test_tasks=(A, C))
    assert res.verdict == "no_effect" and res.reasons == []
    assert res.p_value == pytest.approx(t2_cdf(T)) and res.p_value_text == "0.053"
    bound = SLOPE - t2_quantile(0.95) * SE
    assert f"a drop larger than {abs(bound) * 100:.1f} points" in res.verdict_text
    assert "excluded at 95 %" in res.verdict_text
    assert res.replicates_per_level == {"0": 2, "10": 2}
    assert res.run_to_run.sd_pass1 == pytest.approx(SE) and res.run_to_run.df == 2
    assert [lv.pass_hat_k for lv in res.levels] == [{"1": 0.6875, "2": 0.625},
                                                    {"1": 0.4375, "2": 0.25}]
    assert [r.pass_hat_k["1"] for r in res.runs] == [0.75, 0.625, 0.5, 0.375]
    assert res.excluded.fraction == 0 and res.lack_of_fit.p_value is None  # two levels
    names = [f.outcome for f in res.secondary]
    assert names[:3] == ["pass^1", "env_assertions_met", "write_action_match"]
    assert {"termination:agent_stop", "termination:max_steps"} <= set(names)
    env = res.secondary[1]
    assert env.per_level == {"0": 0.84375, "10": 0.4375}
    split = [s for s in res.strata if s.dimension == "split"]
    assert split[0].tasks == 2 and split[0].name.startswith("test")
    # test split: A and C; per-run pass^1 (1 + 1)/2, (1 + .5)/2, (1 + .5)/2, (1 + 0)/2
    assert split[0].slope.estimate == pytest.approx(0.625 - 0.875)
    assert {s.dimension for s in res.strata} == {"issue_type", "persona", "split"}
    diff = {(c.level, c.replicate): c.diff for c in res.checkpoints}
    assert diff == {(0, "r2"): -0.125, (10, "r1"): -0.25, (10, "r2"): -0.375}
    data = json.loads(res.to_json())
    for key in ("verdict", "slope_per_10pp", "p_value", "alternative", "alpha",
                "replicates_per_level", "excluded", "levels", "runs"):
        assert key in data
    assert set(data["slope_per_10pp"]) >= {"estimate", "ci_low", "ci_high"}


@pytest.mark.parametrize("alternative, alpha, verdict, words", [
    ("less", 0.10, "decrease", "falls by 25.0 points per 10 points"),
    ("two-sided", 0.05, "no_effect", "a drop larger than"),
    ("two-sided", 0.15, "decrease", "falls by 25.0"),
    ("greater", 0.05, "no_effect", "a rise larger than 0.8 points"),
])
def test_verdict_follows_the_declared_test(alternative, alpha, verdict, words):
    res = analyze_runs(BASIC, AnalysisSettings(alternative=alternative, alpha=alpha))
    assert res.verdict == verdict and words in res.verdict_text
    assert res.alternative == alternative and res.alpha == alpha


def test_increase_only_when_the_alternative_allows_it():
    # the same runs with the levels swapped: a rise of 0.25 per 10 points
    rising = [spec(10, "r1", "0_r1"), spec(10, "r2", "0_r2"), spec(0, "r1", "10_r1"),
              spec(0, "r2", "10_r2")]
    less = analyze_runs(rising, AnalysisSettings(alpha=0.1))
    assert less.verdict == "no_effect" and "No drop" in less.verdict_text
    assert analyze_runs(rising, AnalysisSettings(alternative="greater", alpha=0.1)
                        ).verdict == "increase"


def test_infrastructure_errors_make_the_level_invalid_not_failures():
    res = analyze_runs([spec(0, "r1"), spec(0, "r2"), spec(10, "r1"),
                        spec(10, "r2", "10_r2_infra")])
    assert res.verdict == "invalid"
    assert any(r.startswith("level 10 %: 12.5% of its cells") for r in res.reasons)
    per = {e.level: (e.infrastructure_errors, e.missing, e.fraction)
           for e in res.excluded.per_level}
    assert per == {0: (0, 0, 0.0), 10: (1, 1, 2 / 16)}
    # analysed as missing: 10:r2's pass^1 is 0.625 over the trials that ran ...
    assert res.runs[3].pass_hat_k["1"] == 0.625
    assert res.slope_per_10pp.estimate == pytest.approx((0.5 + 0.625) / 2 - 0.6875)
    # ... and 0.5 in the sensitivity row that counts them as failures
    sens = res.sensitivity[0]
    assert "counted as failures" in sens.name
    assert sens.slope.estimate == pytest.approx((0.5 + 0.5) / 2 - 0.6875)


def test_imbalanced_exclusions_are_invalid():
    table = read_runs(parse_spec(s) for s in BASIC)
    status = table.status.copy()
    status[2, 0, 0] = INFRA  # level 10: 1 of 16 cells (6 %)
    bad = OutcomeTable(table.levels, table.replicates, table.paths, table.task_ids, status,
                       table.env_met, table.write_total, table.write_matched,
                       table.termination)
    loose = AnalysisSettings().model_copy(update={"max_excluded_fraction": 0.1})
    res = analyze(bad, loose)
    assert res.verdict == "invalid"
    assert "differ between levels: level 10 % lost 6.2%, level 0 % 0.0%" in res.reasons[0]
    looser = loose.model_copy(update={"max_excluded_imbalance": 0.1})
    assert analyze(bad, looser).verdict == "no_effect"


def test_missing_level_is_invalid():
    declared = analyze_runs(BASIC, expected_levels={0: 2, 10: 2, 20: 2})
    assert declared.verdict == "invalid"
    assert declared.reasons == ["level 20 %: 0 of 2 declared training runs have results"]
    never_ran = analyze_runs(BASIC + [f"20:r1={FIX / 'never_ran' / 'results.json'}"])
    assert never_ran.verdict == "invalid"
    assert never_ran.reasons[0].startswith("level 20 %: no results")
    assert any("no results file" in n for n in never_ran.notes)
    # counted as failures, the missing level would look like a collapse (the old rule)
    assert never_ran.sensitivity[0].slope.estimate < never_ran.slope_per_10pp.estimate


def test_one_run_per_level_is_insufficient_but_shows_the_checkpoints():
    res = analyze_runs([spec(0, "r1"), spec(10, "r1")])
    assert res.verdict == "insufficient"
    assert "confounded with the checkpoint" in res.reasons[0]
    assert res.p_value is None and res.slope_per_10pp.ci_low is None
    assert res.slope_per_10pp.estimate == pytest.approx(-0.25)
    assert res.sensitivity[0].slope.p_value is None
    assert all(c.p_value is None for f in res.secondary for c in f.contrasts)
    cp, = res.checkpoints
    # paired over tasks: diffs 0, -.5, -.5, 0 -> mean -.25, sd .2887, t = -1.732 on 3 df
    assert cp.diff == -0.25 and cp.tasks == 4 and cp.reference == "0:r1"
    from scipy import stats

    assert cp.p_value == pytest.approx(2 * stats.t.cdf(-math.sqrt(3), 3))


def test_aa_design_states_the_variance_that_later_runs_use(tmp_path):
    aa = analyze_runs([spec(0, "r1"), spec(0, "r2")])
    assert aa.verdict == "insufficient" and "A/A" in aa.reasons[0]
    assert aa.run_to_run.sd_pass1 == pytest.approx(0.125 / math.sqrt(2))  # |.75 - .625|/sqrt2
    assert aa.run_to_run.df == 1 and aa.run_to_run.source.startswith("measured")
    path = tmp_path / "aa.json"
    path.write_text(aa.to_json())
    res = analyze_runs([spec(0, "r1"), spec(10, "r1")], run_variance=path)
    assert res.verdict == "no_effect"
    s = res.slope_per_10pp
    assert s.se == pytest.approx(aa.run_to_run.sd_pass1 / math.sqrt(0.5)) and s.df == 1
    assert s.p_value == pytest.approx(0.5 + math.atan(-2) / math.pi)  # t = -2, Cauchy (1 df)
    assert "supplied" in res.method and res.run_to_run.source.startswith("supplied")
    # the same through the settings
    via = analyze_runs([spec(0, "r1"), spec(10, "r1")],
                       AnalysisSettings(run_variance_from=str(path)))
    assert via.p_value == pytest.approx(s.p_value)
    # a supplied SD cannot be passed on as if measured
    path2 = tmp_path / "res.json"
    path2.write_text(res.to_json())
    with pytest.raises(InputError, match="supplied"):
        analyze_runs(BASIC, run_variance=path2)


# --------------------------------------------------------------------------- command line

def test_cli_analyze_stdout_and_file(tmp_path, capsys):
    assert main(["analyze", *BASIC, "--split-tasks", SPLIT]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "no_effect" and data["alternative"] == "less"
    assert data["slope_per_10pp"]["estimate"] == pytest.approx(SLOPE)
    out = tmp_path / "analysis.json"
    assert main(["analyze", *BASIC, "-o", str(out), "--analysis-alpha", "0.1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["verdict"] == "decrease" and summary["out"] == str(out)
    assert json.loads(out.read_text())["alpha"] == 0.1


def test_cli_analyze_declared_levels_and_errors(tmp_path, capsys):
    assert main(["analyze", *BASIC, "--levels", "0,10,20", "--replicates", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "invalid"
    assert main(["analyze", "0-r1.json"]) == 2
    assert "LEVEL:REPLICATE=PATH" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["analyze", f"0:r1={broken}"]) == 2
    assert "malformed JSON" in capsys.readouterr().err


def test_cli_plan_power(capsys):
    assert main(["plan-power", "--levels", "0,5,10,20", "--tasks", "114", "--trials", "4",
                 "--sd-pass1", "0.03", "--smallest-effect", "0.05"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["replicates_needed"] == 2 and plan["power_by_replicates"]["1"] == 0.0
    assert plan["sd_source"] == "given"
