"""The analysis's typed result (pydantic) and the p-value formatter.

Every float that could not be computed is None (JSON null), never NaN. Slopes are in
pass^1 units (a proportion) per 10 points of sycophancy: -0.03 is a drop of 3 points of
pass^1 for every 10 points more sycophantic training data.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["AnalysisResult", "CheckpointDiff", "Contrast", "Excluded", "ExcludedLevel",
           "LackOfFit", "LevelSummary", "OutcomeFamily", "RunSummary", "RunToRun",
           "SensitivityRow", "Slope", "Stratum", "Verdict", "format_p"]

Verdict = Literal["decrease", "increase", "no_effect", "invalid", "insufficient"]
SCHEMA = "simia.analysis/1"


def format_p(p: float | None) -> str:
    """A p-value with two significant digits: 0.046 -> '0.046', 0.054 -> '0.054', 0.05 ->
    '0.050', 0.5 -> '0.50', 1 -> '1.0'; below 0.0001 -> '<0.0001'; None/NaN -> 'n/a'."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if p < 1e-4:
        return "<0.0001"
    return format(min(p, 1.0), "#.2g")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_nan(cls, value: Any) -> Any:
        return _finite(value)


class Slope(_Model):
    """The OLS slope of per-run pass^1 (or another per-run outcome) on the level."""

    estimate: float | None
    se: float | None = None
    df: float | None = None
    t: float | None = None
    ci_low: float | None = None  # two-sided (1 - alpha) confidence interval
    ci_high: float | None = None
    confidence: float
    bound: float | None = None  # one-sided (1 - alpha) bound the alternative points at
    p_value: float | None = None  # under ``alternative``
    alternative: str
    variance: str = ""  # where the run-to-run variance came from

    @property
    def p_text(self) -> str:
        return format_p(self.p_value)


class ExcludedLevel(_Model):
    """Cells of one level: judged, lost to infrastructure errors, missing."""

    level: float
    cells: int
    infrastructure_errors: int
    missing: int
    fraction: float | None  # (infrastructure errors + missing) / cells; None: no cells


class Excluded(_Model):
    """Cells excluded from the analysis (analysed as missing, not as failures)."""

    cells: int
    infrastructure_errors: int
    missing: int
    fraction: float | None
    per_level: list[ExcludedLevel]
    rule: str


class RunSummary(_Model):
    """One training run (a level's replicate)."""

    level: float
    replicate: str
    path: str | None
    tasks: int  # tasks with at least one judged trial
    cells: int
    infrastructure_errors: int
    missing: int
    pass_hat_k: dict[str, float]  # over the trials that ran
    pass1_se_tasks: float | None  # evaluation noise of this run's pass^1 (over tasks)
    env_assertions_met: float | None
    write_action_match: float | None
    termination_reasons: dict[str, int]


class LevelSummary(_Model):
    """One level: its runs' mean pass^k and how much the runs differ."""

    level: float
    replicates: int
    pass_hat_k: dict[str, float]  # mean over the level's runs
    pass1_run_sd: float | None  # SD of the runs' pass^1 (None with one run)


class RunToRun(_Model):
    """The run-to-run SD of a run's pass^1 (seed, data draw and evaluation noise together):
    pooled within levels here, or supplied from an earlier analysis."""

    sd_pass1: float | None
    df: float
    tasks: int
    trials: int
    source: str


class LackOfFit(_Model):
    """Level as a factor against the linear trend (F test): a small p says the levels do
    not lie on a line (one bad run or level, a non-monotone pattern)."""

    f: float | None
    df_num: float | None
    df_den: float | None
    p_value: float | None
    note: str = ""


class Contrast(_Model):
    """One level against the reference (lowest) level, runs as the unit; two-sided."""

    level: float
    reference: float
    estimate: float | None
    se: float | None = None
    df: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_holm: float | None = None  # Holm-adjusted within the outcome's family


class OutcomeFamily(_Model):
    """A secondary outcome: its per-level means and Holm-adjusted contrasts."""

    outcome: str
    description: str
    per_level: dict[str, float | None]
    contrasts: list[Contrast]


class Stratum(_Model):
    """The primary slope on a subset of the tasks (secondary)."""

    dimension: str  # issue_type | persona | split
    name: str
    tasks: int
    slope: Slope
    p_holm: float | None = None  # Holm within the dimension (two-sided p values)


class SensitivityRow(_Model):
    """The primary slope under another handling of the data."""

    name: str
    slope: Slope


class CheckpointDiff(_Model):
    """How one checkpoint differs from the reference checkpoint on the same tasks (paired
    over tasks): evaluation noise only, says nothing about the data without replicates."""

    level: float
    replicate: str
    reference: str  # 'LEVEL:REPLICATE'
    tasks: int
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


class AnalysisResult(_Model):
    """The verdict and everything behind it (``simia analyze``'s JSON)."""

    kind: str = SCHEMA  # the JSON format's name and version
    verdict: Verdict
    verdict_text: str
    reasons: list[str]
    endpoint: str
    method: str
    alternative: str
    alpha: float
    slope_per_10pp: Slope
    p_value: float | None
    p_value_text: str
    replicates_per_level: dict[str, int]
    excluded: Excluded
    levels: list[LevelSummary]
    runs: list[RunSummary]
    run_to_run: RunToRun
    lack_of_fit: LackOfFit
    sensitivity: list[SensitivityRow]
    secondary: list[OutcomeFamily]
    strata: list[Stratum]
    checkpoints: list[CheckpointDiff]
    notes: list[str]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return self.model_dump(mode="json")

    def to_json(self, *, indent: bool = True) -> str:
        """The result as JSON text."""
        import json

        return json.dumps(self.to_dict(), indent=2 if indent else None)
