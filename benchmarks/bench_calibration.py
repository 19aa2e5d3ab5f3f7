#!/usr/bin/env python
"""Calibration study of the verdict: simulated experiments with known truth, each run
through the SAME function the DAG's report and ``simia analyze`` call
(:func:`simia.analysis.inference.analyze`, secondary outcomes and strata included).

Experiments are drawn from the logistic model of :mod:`simia.analysis.simulate` (task,
run and task x run random effects, trials correlated within a task and run; telecom-like:
114 tasks x 4 trials, levels 0/5/10/20, baseline pass^1 0.26). Scenarios:

* null, run SD 0.2 / task x run SD 0.5 (logit) and 0.1 / 0.3, 2 and 3 runs per level:
  false-positive rate (directional claims) and slope CI coverage;
* effects of -0.02 / -0.04 / -0.06 pass^1 per 10 points with 2 and 3 runs per level:
  power against :func:`simia.analysis.power.plan_power`'s prediction, and coverage;
* one level all infrastructure errors: must be ``invalid``;
* 0.5 % random infrastructure errors everywhere: still calibrated, how often ``invalid``;
* one run per level: must be ``insufficient``; beside it how often the checkpoint-level
  contrast (the top level's run against the lowest's, paired t over tasks, two-sided)
  claims an effect: what a checkpoint-level test says when the runs differ by chance;
* one run per level with the run-to-run SD of a simulated A/A run (one level, 5 runs)
  supplied: false-positive rate, coverage, power.

Targets: false-positive rate within 2 points of alpha, 95 % slope CI coverage 93-97 %,
power at least the planner's prediction (within Monte Carlo error: 2 SE).

Run:  .venv/bin/python benchmarks/bench_calibration.py [--experiments 1000] [--seed 1]
      [--json figures.json] [--quick]
A benchmark, not a test: it prints figures (and PASS/MISS against the targets) and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "include"))

from simia.analysis.inference import RunVariance, analyze  # noqa: E402
from simia.analysis.power import plan_power  # noqa: E402
from simia.analysis.simulate import (SimulationModel, simulate_experiment,  # noqa: E402
                                     simulated_test_tasks)
from simia.settings.analysis import AnalysisSettings  # noqa: E402

ALPHA = 0.05


@dataclass
class Scenario:
    name: str
    model: SimulationModel
    aa_supplied: bool = False  # supply the run-to-run SD of a simulated A/A run
    expect: str = "calibrated"  # calibrated | invalid | insufficient
    planned: float | None = None  # the planner's predicted power (effects)


@dataclass
class Tally:
    n: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    claims: int = 0  # verdict decrease (the declared alternative 'less')
    covered: int = 0
    with_ci: int = 0
    checkpoint_claims: int = 0  # 1 run/level: top level vs lowest checkpoint, p < alpha
    seconds: float = 0.0

    def add_verdict(self, v: str) -> None:
        self.verdicts[v] = self.verdicts.get(v, 0) + 1


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n) if n else math.nan


def _aa_variance(model: SimulationModel, rng: np.random.Generator,
                 settings: AnalysisSettings) -> RunVariance:
    """A simulated A/A run (the lowest level, 5 replicates) analysed by analyze(): its
    measured run-to-run SD, as run_variance_from would supply it."""
    aa = model.with_(levels=(min(model.levels),), replicates=5, slope_per_10pp=0.0,
                     infra_level=None)
    table, _ = simulate_experiment(aa, rng)
    rr = analyze(table, settings, secondary=False).run_to_run
    assert rr.sd_pass1 is not None
    return RunVariance(rr.sd_pass1, rr.df, rr.tasks, rr.trials, "simulated A/A run")


def run_scenario(sc: Scenario, experiments: int, rng: np.random.Generator,
                 settings: AnalysisSettings) -> Tally:
    tally = Tally()
    t0 = time.perf_counter()
    for _ in range(experiments):
        table, truth = simulate_experiment(sc.model, rng)
        variance = _aa_variance(sc.model, rng, settings) if sc.aa_supplied else None
        res = analyze(table, settings, run_variance=variance,
                      test_tasks=simulated_test_tasks(table.task_ids))
        tally.n += 1
        tally.add_verdict(res.verdict)
        tally.claims += res.verdict == "decrease"
        s = res.slope_per_10pp
        if s.ci_low is not None and s.ci_high is not None and math.isfinite(truth):
            tally.with_ci += 1
            tally.covered += s.ci_low <= truth <= s.ci_high
        if sc.model.replicates == 1 and res.checkpoints:
            top = res.checkpoints[-1]  # the highest level's run against the lowest's
            tally.checkpoint_claims += top.p_value is not None and top.p_value < ALPHA
    tally.seconds = time.perf_counter() - t0
    return tally


def scenarios(quick: bool) -> list[Scenario]:
    base = SimulationModel()
    hi = dict(run_sd=0.2, task_run_sd=0.5)
    lo = dict(run_sd=0.1, task_run_sd=0.3)
    out = [
        Scenario("null, run/task x run SD 0.2/0.5, 2 runs/level", base.with_(**hi)),
        Scenario("null, run/task x run SD 0.1/0.3, 2 runs/level", base.with_(**lo)),
        Scenario("null, run/task x run SD 0.2/0.5, 3 runs/level",
                 base.with_(**hi, replicates=3)),
    ]
    effects = [(-0.04, 2), (-0.04, 3)] if quick else [(-0.02, 2), (-0.04, 2), (-0.06, 2),
                                                       (-0.02, 3), (-0.04, 3)]
    for eff, reps in effects:
        out.append(Scenario(f"effect {eff:+.2f}/10 pts, SD 0.2/0.5, {reps} runs/level",
                            base.with_(**hi, slope_per_10pp=eff, replicates=reps)))
    out += [
        Scenario("null, 0.5 % random infrastructure errors, 2 runs/level",
                 base.with_(**hi, infra_rate=0.005)),
        Scenario("one level (20 %) all infrastructure errors, 2 runs/level",
                 base.with_(**hi, infra_level=20), expect="invalid"),
        Scenario("null, 1 run/level (SD 0.2/0.5)", base.with_(**hi, replicates=1),
                 expect="insufficient"),
        Scenario("null, 1 run/level (SD 0.1/0.3)", base.with_(**lo, replicates=1),
                 expect="insufficient"),
        Scenario("null, 1 run/level + A/A-measured SD (5 runs)",
                 base.with_(**hi, replicates=1), aa_supplied=True),
        Scenario("effect -0.06/10 pts, 1 run/level + A/A-measured SD",
                 base.with_(**hi, replicates=1, slope_per_10pp=-0.06), aa_supplied=True),
    ]
    return out


def _planned(sc: Scenario, settings: AnalysisSettings) -> float | None:
    m = sc.model
    if m.slope_per_10pp == 0:
        return None
    plan_settings = settings.model_copy(update={
        "smallest_effect_per_10pp": abs(m.slope_per_10pp), "run_sd_logit": m.run_sd,
        "task_run_sd_logit": m.task_run_sd})
    plan = plan_power(m.levels, m.tasks, m.trials, plan_settings,
                      baseline_pass1=m.baseline_pass1, task_sd=m.task_sd,
                      trial_icc=m.trial_icc)
    if sc.aa_supplied:
        return None  # depends on each A/A draw's df (4): reported, not predicted here
    return plan.power_by_replicates[str(m.replicates)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=1000, help="per scenario (default 1000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer scenarios (effects -0.04 only)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    settings = AnalysisSettings(alpha=ALPHA)  # alternative 'less', the default
    rng = np.random.default_rng(args.seed)
    # statsmodels' Holm runs gc.collect() per call: freeze the imported modules' objects so
    # a collection is cheap (this changes no result)
    analyze(simulate_experiment(SimulationModel(), rng)[0], settings)
    gc.freeze()
    print(f"calibration of simia.analysis.analyze: {args.experiments} experiments per "
          f"scenario, alpha {ALPHA} one-sided (less), 114 tasks x 4 trials, levels 0/5/10/20, "
          f"seed {args.seed}\n")
    head = (f"{'scenario':<58} {'claims':>14} {'coverage':>14} {'planned':>8}  "
            f"{'verdicts'}")
    print(head)
    print("-" * len(head))
    figures: list[dict[str, Any]] = []
    for sc in scenarios(args.quick):
        planned = _planned(sc, settings)
        t = run_scenario(sc, args.experiments, rng, settings)
        rate = t.claims / t.n
        cov = t.covered / t.with_ci if t.with_ci else math.nan
        checks = []
        if sc.expect == "calibrated" and sc.model.slope_per_10pp == 0:
            checks.append(("false-positive rate within 2 points of alpha",
                           abs(rate - ALPHA) <= 0.02))
        if sc.expect == "calibrated" and t.with_ci:
            checks.append(("coverage 93-97 %", 0.93 <= cov <= 0.97))
        if planned is not None:
            checks.append(("power >= planned (2 SE)", rate >= planned - 2 * _se(rate, t.n)))
        if sc.expect != "calibrated":
            checks.append((f"always {sc.expect}", t.verdicts.get(sc.expect, 0) == t.n))
        verdicts = ", ".join(f"{k} {v / t.n:.0%}" for k, v in sorted(t.verdicts.items()))
        cov_text = f"{cov:.3f}±{_se(cov, t.with_ci):.3f}" if t.with_ci else "-"
        print(f"{sc.name:<58} {rate:>7.3f}±{_se(rate, t.n):.3f} {cov_text:>14} "
              f"{planned if planned is not None else float('nan'):>8.3f}  {verdicts}")
        if sc.model.replicates == 1 and not sc.aa_supplied:
            cp = t.checkpoint_claims / t.n
            print(f"{'':<4}checkpoint contrast (top level's run vs lowest's, paired over tasks) "
                  f"claims an effect (either direction): {cp:.3f}")
        for what, ok in checks:
            print(f"{'':<4}{'PASS' if ok else 'MISS'}  {what}")
        figures.append({"scenario": sc.name, "model": sc.model.__dict__, "experiments": t.n,
                        "directional_claims": rate, "claims_se": _se(rate, t.n),
                        "coverage": cov if t.with_ci else None, "with_ci": t.with_ci,
                        "planned_power": planned, "verdicts": t.verdicts,
                        "checkpoint_claims": t.checkpoint_claims / t.n if t.n else None,
                        "checks": {w: ok for w, ok in checks}, "seconds": t.seconds})
    misses = [(f["scenario"], w) for f in figures for w, ok in f["checks"].items() if not ok]
    print(f"\n{'all targets met' if not misses else f'{len(misses)} target(s) missed'}"
          + "".join(f"\n  MISS {s}: {w}" for s, w in misses))
    if args.json:
        Path(args.json).write_text(json.dumps({"alpha": ALPHA, "seed": args.seed,
                                               "figures": figures}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
