"""The report's typed content: what :func:`simia.report.analysis.analyze` computes, the
templates render and the report's JSON holds (:func:`to_json`).

Numbers the report computes are typed as they are; values copied unchanged from a run's
summary files are :data:`Raw` (whatever JSON the file holds: the report shows them, it
does not validate them). Field names and order are the keys and order of that JSON,
which the runs index (and so the UI) reads back: renaming a field changes that file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from simia.report.stats import Estimate

if TYPE_CHECKING:
    from simia.analysis.results import AnalysisResult

__all__ = [
    "Analysis", "DataSection", "DatasetLevel", "Datasets", "DeclaredDesign", "Design",
    "EvalCost", "GenerateCounts", "Headline", "JudgeCounts", "LLMUsage", "LevelPass1",
    "LevelRow", "Participant", "ProcessedCounts", "Raw", "RunRow", "RunStats", "Scores",
    "SeedCounts", "Settings", "StageUsage", "Training", "pick", "to_json",
]

#: a value copied unchanged from an input file (any JSON value, None when absent)
Raw = Any

_T = TypeVar("_T")


def pick(cls: type[_T], source: Mapping[str, Any], default: Any = None, **given: Any) -> _T:
    """An instance of the dataclass ``cls`` whose fields not ``given`` are the values of
    the same keys in ``source`` (``default`` for a key it lacks)."""
    values = {f.name: source.get(f.name, default) for f in fields(cls)  # type: ignore[arg-type]
              if f.name not in given}
    return cls(**values, **given)


def to_json(value: Any) -> Any:
    """Plain JSON data (dicts, lists, scalars) of a typed value: a dataclass becomes a dict
    of its fields in order, unless it says otherwise with an ``as_json`` method; a pydantic
    model (the run-aware analysis) its JSON dump."""
    as_json = getattr(value, "as_json", None)
    if callable(as_json):
        return as_json()
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


@dataclass(frozen=True)
class Settings:
    """How the descriptive (per-checkpoint) statistics were computed and what a success is."""

    resamples: int
    seed: int
    confidence: float
    success: str


@dataclass(frozen=True)
class DeclaredDesign:
    """The training runs the run declared (level x replicate) and where that comes from."""

    levels: list[float]
    runs_per_level: dict[str, int]  # level ("5") -> declared training runs
    runs: int  # declared training runs in all
    runs_with_results: int
    source: str  # run.json, the datasets' metadata or the evaluation folders found
    evaluates: bool  # False: the run was declared without training or evaluation


@dataclass(frozen=True)
class Participant:
    """The agent's or the user simulator's LLM and its arguments (secrets removed)."""

    llm: str | None
    llm_args: dict[str, Any]


@dataclass(frozen=True)
class RunStats:
    """One training run's evaluation, described per checkpoint: pass^k over the trials that
    ran (infrastructure errors and missing simulations left out) with a bootstrap CI over
    tasks (this checkpoint's evaluation noise only), and the same counted as failures."""

    tasks: int
    trials: int
    cells: int
    judged_cells: int  # cells whose simulation ran and was judged
    successes: int
    pass_hat_k: dict[str, Estimate]  # "1".."trials": over judged cells, bootstrap over tasks
    pass1_as_failures: float  # pass^1 with every excluded cell counted as a failure
    avg_reward: float
    tau2_pass_hat_k: dict[str, float]  # tau2's own (infrastructure errors dropped)
    tau2_avg_reward: float | None
    tau2_evaluated_simulations: int
    infrastructure_errors: int
    missing_cells: int
    termination_counts: dict[str, int]
    agent_cost_usd: float
    user_cost_usd: float
    duration_total_s: float
    mean_duration_s: float | None
    agent: Participant
    user: Participant
    num_trials_setting: int
    seed: int | None
    max_steps: int | None
    notes: list[str]


@dataclass(frozen=True)
class RunRow:
    """One training run (a level's replicate): where its evaluation came from, its results
    (``stats``, None with a ``problem`` when there are none)."""

    level: float
    replicate: int
    slug: str
    results: str  # the results file, relative to the run folder when inside it
    evaluator: Raw
    backend: Raw
    model: Raw
    problem: str | None
    stats: RunStats | None = None

    def as_json(self) -> dict[str, Any]:
        """The row as the report's JSON has it: the results' fields inline (absent without)."""
        out = {f.name: to_json(getattr(self, f.name)) for f in fields(self)
               if f.name != "stats"}
        if self.stats is not None:
            out.update(to_json(self.stats))
        return out


@dataclass(frozen=True)
class LevelPass1:
    """A level's pass^1: the mean of its training runs' pass^1 with a run-aware CI (the
    run-to-run SD over sqrt(runs), t quantile on its df); no interval without a run-to-run
    SD (one run per level)."""

    estimate: float | None
    low: float | None
    high: float | None
    confidence: float
    sd: float | None  # the run-to-run SD used
    df: float | None


@dataclass(frozen=True)
class LevelRow:
    """One sycophancy level: its training runs and their pass^1 (``pass_hat_k["1"]``, run
    aware; higher k: the runs' mean, no interval)."""

    level: float
    slug: str  # replicate 1's folder name
    runs: int  # declared training runs
    runs_with_results: int
    pass_hat_k: dict[str, LevelPass1]
    runs_pass1: dict[str, float | None]  # replicate ("1", "2") -> that run's pass^1
    tasks: int | None
    trials: int | None
    infrastructure_errors: int
    missing_cells: int
    problem: str | None  # the runs without results, named


@dataclass(frozen=True)
class SeedCounts:
    """The seeds stage: seeds asked for, made and failed."""

    requested: Raw
    seeds: Raw
    failed: Raw


@dataclass(frozen=True)
class GenerateCounts:
    """The generate stage: conversations targeted, attempted, valid and failed."""

    target: Raw
    attempted: Raw
    valid: Raw
    failed: Raw
    failed_by_error: Raw
    mode: Raw


@dataclass(frozen=True)
class ProcessedCounts:
    """Validation: conversations in, kept and rejected (by reason)."""

    input: Raw
    kept: Raw
    rejected: Raw
    rejected_by_reason: Raw
    format: Raw


@dataclass(frozen=True)
class JudgeCounts:
    """The LLM judge: conversations scored and labelled."""

    conversations: Raw
    scored: Raw
    failed: Raw
    sycophantic: Raw
    clean: Raw
    threshold: Raw
    findings_by_level: Raw = None  # of the sycophantic: policy-level, schema-level only


@dataclass(frozen=True)
class CollectionCounts:
    """The collection driven by the design: what it needed, what it found (counts,
    yields per attempt, findings by level, the rule audit of what validation rejected)."""

    needs: Raw
    found: Raw
    caps: Raw


@dataclass(frozen=True)
class TwinCounts:
    """Counterfactual twins: needed, accepted, candidates tried, discarded by reason."""

    needed: Raw
    accepted: Raw
    tried: Raw
    discarded: Raw
    discarded_by_reason: Raw


@dataclass(frozen=True)
class Design:
    """The dataset design the SFT datasets were built with."""

    levels_pct: Raw
    size: Raw
    shared_clean: Raw
    seed: Raw
    threshold: Raw
    label_rule: Raw


@dataclass(frozen=True)
class DatasetLevel:
    """One SFT dataset's composition."""

    name: str
    level_pct: Raw
    replicate: Raw
    total: Raw
    clean: Raw
    sycophantic: Raw
    sycophantic_pct: Raw


@dataclass(frozen=True)
class Datasets:
    """The SFT datasets: label pools, design and one composition per level."""

    pools: Raw  # conversations by label
    label_source: Raw
    format: Raw
    design: Design
    levels: list[DatasetLevel]
    sycophancy_source: Raw = "natural"  # natural | twins


@dataclass(frozen=True)
class DataSection:
    """The data stages' counts (None: the stage's summary is missing or empty)."""

    seeds: SeedCounts | None
    generate: GenerateCounts | None
    processed: ProcessedCounts | None
    judge: JudgeCounts | None
    datasets: Datasets | None
    collection: CollectionCounts | None = None
    twins: TwinCounts | None = None


@dataclass(frozen=True)
class Scores:
    """The distribution of the sycophancy scores the datasets were labelled from."""

    source: str | None  # the score file, relative to the run folder
    count: int
    threshold: Raw
    above_threshold: int
    mean: float | None
    median: float | None
    histogram: dict[str, int]  # score ("0", "12.5", ...) -> conversations


@dataclass(frozen=True)
class StageUsage:
    """One LLM stage's calls, tokens and estimated cost (0 where the summary has none)."""

    calls: Raw
    failed_calls: Raw
    input_tokens: Raw  # not read from or written to the prompt cache
    output_tokens: Raw
    cache_read_tokens: Raw  # input read from Bedrock's prompt cache (0 before caching)
    cache_write_tokens: Raw  # input written to it
    cost_usd: Raw
    model_id: str | list[str] | None


@dataclass(frozen=True)
class EvalCost:
    """One level's evaluation cost, from tau2's (litellm's) estimates."""

    agent_cost_usd: float
    user_cost_usd: float
    simulations: int


@dataclass(frozen=True)
class LLMUsage:
    """LLM calls and estimated cost per stage and per evaluated level."""

    stages: dict[str, StageUsage]  # seeds / generate / judge
    evaluation: dict[str, EvalCost]  # run slug -> cost, by level then replicate
    total_cost_usd: float


@dataclass(frozen=True)
class Training:
    """One training run's training: the fields of its training summary that the file has
    (in ``keys``), or those derived from LLaMA-Factory's trainer state; ``source`` says
    which file. A field the file lacks is None here and absent from the report's JSON."""

    source: str
    keys: tuple[str, ...]
    level: float
    replicate: int
    slug: str
    dataset: Raw = None
    final_loss: Raw = None
    train_loss: Raw = None
    steps: Raw = None
    total_steps: Raw = None
    epoch: Raw = None
    train_runtime_s: Raw = None
    loss_curve: Raw = None  # [[step, loss], ...]

    def as_json(self) -> dict[str, Any]:
        return ({"level": self.level, "replicate": self.replicate}
                | {k: getattr(self, k) for k in self.keys} | {"source": self.source})


@dataclass(frozen=True)
class Headline:
    """The answer in one sentence. ``verdict``: the run-aware analysis's (decrease,
    increase, no_effect, invalid, insufficient); ``reasons`` why invalid or insufficient;
    ``warnings`` qualify it."""

    verdict: str
    text: str
    warnings: list[str]
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Analysis:
    """Every number of the report (its JSON file)."""

    question: str
    run_dir: str
    settings: Settings
    design: DeclaredDesign
    headline: Headline
    method: list[str]  # the method note of the first screen
    levels: list[LevelRow]
    runs: list[RunRow]  # every training run, by level then replicate
    #: the run-aware analysis (simia analyze's JSON); None when no run was evaluated
    analysis: AnalysisResult | None
    data: DataSection
    scores: Scores | None
    llm_usage: LLMUsage
    training: dict[str, Training]  # run slug -> training, by level then replicate
    missing: list[str]
    problems: list[str]
    plots: list[str] = field(default_factory=list)  # file names of the plots drawn

    @property
    def evaluated(self) -> list[RunRow]:
        """The training runs with results, by level then replicate."""
        return [r for r in self.runs if r.stats is not None]

    @property
    def max_k(self) -> int:
        """The largest k of pass^k over the runs (1 without results)."""
        return max((int(k) for r in self.runs if r.stats is not None
                    for k in r.stats.pass_hat_k), default=1)

    @property
    def termination_reasons(self) -> list[str]:
        """The termination reasons any evaluated run has (``user_stop`` when none has)."""
        rows = [r.stats for r in self.runs if r.stats is not None]
        if not rows:
            return []
        return [k for k in rows[0].termination_counts
                if any(s.termination_counts.get(k) for s in rows)] or ["user_stop"]
