"""Analysis settings: the verdict's single declared test, and the power plan's assumptions.

Declared before the run (pre-registration): the primary endpoint, its alternative and
alpha make exactly one test, and the verdict is that test's. The smallest effect of
interest and the run-to-run variance size the run (``simia plan-power``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from simia.settings.fields import SettingsModel, setting

__all__ = ["DEFAULT_RUN_SD_LOGIT", "DEFAULT_TASK_RUN_SD_LOGIT", "PRIMARY_ENDPOINT",
           "AnalysisSettings"]

#: the only primary endpoint: the OLS slope of each training run's pass^1 on the level
PRIMARY_ENDPOINT = "pass^1 slope per 10 points"

# Run-to-run variance "from the literature". Fine-tuning the same model on the same data
# with another seed / data order moves downstream scores by amounts comparable to method
# differences (Dodge et al. 2020, arXiv 2002.06305; Bouthillier et al. 2021, arXiv
# 2103.03098). On the logit scale of a task's success this is a run SD of 0.1-0.2 and a
# task x run SD of 0.3-0.5 (docs/statistics-notes.md, the ranges the simulation of
# the old rule used); we plan with the upper end, the cautious choice: at pass^1 near 0.26
# (114 tasks x 4 trials, simia.analysis.simulate's task spread and trial correlation) they
# make a run's pass^1 vary by about 2.6 points (SD) between seeds, 3.7 with the evaluation
# noise of its tasks and trials. A measured value (run_variance_from) replaces them.
DEFAULT_RUN_SD_LOGIT = 0.2
DEFAULT_TASK_RUN_SD_LOGIT = 0.5


class AnalysisSettings(SettingsModel):
    """The experiment's verdict: one declared test, and how much missing data it tolerates."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Analysis"

    primary_endpoint: Literal["pass^1 slope per 10 points"] = setting(
        PRIMARY_ENDPOINT, title="Primary endpoint",
        description="The one test the verdict uses: the OLS slope of each training run's "
                    "pass^1 on the sycophancy level, per 10 points, with training runs as the "
                    "unit (t test on runs - 2 degrees of freedom).")
    alternative: Literal["less", "two-sided", "greater"] = setting(
        "less", param="analysis_alternative", title="Alternative hypothesis",
        description="less: more sycophancy lowers success (a rise can only be 'no_effect'); "
                    "two-sided: either direction; greater: more sycophancy raises it.")
    alpha: float = setting(0.05, param="analysis_alpha", gt=0, lt=0.5, title="Alpha",
                           description="Level of the primary test (one-sided unless the "
                                       "alternative is two-sided).")
    smallest_effect_per_10pp: float = setting(
        0.04, param="smallest_effect", gt=0, le=1, title="Smallest effect of interest",
        description="A change of pass^1 per 10 points of sycophancy (0.04: 4 points of "
                    "pass^1) the run must be able to detect; sizes the replicates.")
    target_power: float = setting(0.8, param="target_power", gt=0, lt=1,
                                  title="Target power",
                                  description="Power the replicates are planned for.")
    run_sd_logit: float = setting(
        DEFAULT_RUN_SD_LOGIT, param="planning_run_sd", ge=0, le=3,
        title="Run-to-run SD (logit, planning)",
        description="Seed-to-seed SD of a training run's logit success, used to plan when no "
                    "earlier analysis measured it (the literature's upper end).")
    task_run_sd_logit: float = setting(
        DEFAULT_TASK_RUN_SD_LOGIT, param="planning_task_run_sd", ge=0, le=3,
        title="Task x run SD (logit, planning)",
        description="How differently two runs of one level solve the same task (logit SD).")
    run_variance_from: str | None = setting(
        None, param="run_variance_from", title="Measured run-to-run variance",
        description="An earlier run's analysis.json (e.g. an A/A run: one level, several "
                    "replicates) whose measured run-to-run SD plans this run and, with one "
                    "run per level, stands in for the replicates.")
    max_excluded_fraction: float = Field(0.02, ge=0, le=1)
    """a level with more of its cells lost to infrastructure errors or missing: invalid"""
    max_excluded_imbalance: float = Field(0.01, ge=0, le=1)
    """levels whose excluded fractions differ by more: invalid (could bias the contrast)"""
