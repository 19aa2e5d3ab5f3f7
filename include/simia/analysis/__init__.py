"""The experiment's verdict: run-aware inference on the level effect.

Training runs (a level's replicates) are the unit: each run's pass^1 is regressed on the
sycophancy level and the declared test (:class:`simia.settings.analysis.AnalysisSettings`)
gives the verdict (:mod:`~simia.analysis.inference`). Infrastructure errors and missing
simulations are missing data, not failures (:mod:`~simia.analysis.outcomes`). Secondary
outcomes, strata and checkpoint differences are declared as such
(:mod:`~simia.analysis.secondary`); :mod:`~simia.analysis.power` plans the replicates;
:mod:`~simia.analysis.simulate` simulates experiments with known truth (the calibration
study in ``benchmarks/bench_calibration.py``).

Needs numpy, scipy and statsmodels (the ``analysis`` extra).
"""

from __future__ import annotations

from simia.analysis.inference import (RunVariance, analyze, analyze_runs,
                                      run_variance_from_analysis, slope_test)
from simia.analysis.outcomes import OutcomeTable, RunSpec, parse_spec, read_runs
from simia.analysis.power import PowerPlan, plan_power, plan_power_for_run
from simia.analysis.results import AnalysisResult, format_p

__all__ = ["AnalysisResult", "OutcomeTable", "PowerPlan", "RunSpec", "RunVariance", "analyze",
           "analyze_runs", "format_p", "parse_spec", "plan_power", "plan_power_for_run",
           "read_runs", "run_variance_from_analysis", "slope_test"]
