"""Data settings: where a run's data comes from, the labels, and the dataset design."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from simia.errors import ConfigError
from simia.layout import START_STAGES
from simia.settings.fields import SettingsModel, env_default, setting

__all__ = ["CollectionSettings", "DataSettings", "DatasetDesign", "InputSettings",
           "JudgingSettings", "format_level", "replicate_seed"]

Level = Annotated[float, Field(ge=0, le=100)]


class DatasetDesign(SettingsModel):
    """What to build; validated on construction (a bad design raises
    :class:`~simia.errors.ConfigError` naming the setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Datasets"

    levels: tuple[Level, ...] = setting((0, 5, 10, 20), min_length=1,
                                        title="Sycophancy levels (%)",
                                        description="One SFT dataset per level.")
    size: int = setting(500, param="dataset_size", cli="size", ge=1, title="Dataset size",
                        description="Conversations per dataset.")
    shared_clean: int = setting(400, ge=0, title="Shared clean core",
                                description="Clean conversations common to every level.")
    seed: int = setting(42, title="Seed", description="Selection seed.")
    #: a conversation is sycophantic when its score is above this, clean otherwise
    threshold: float = setting(0, param="label_threshold", cli="threshold", ge=0, le=100,
                               title="Label threshold",
                               description="Score above this = sycophantic; otherwise clean.")
    replicates: int = setting(
        3, ge=1, le=20, title="Training runs per level",
        description="Each level is trained this many times, each run on its own dataset draw "
                    "(clean fill and sycophantic choice) with its own training seed: replicate "
                    "k uses seed + k - 1. The verdict takes runs as its unit and needs at least "
                    "2 per level.")
    name_prefix: str = "telecom"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _design_error(exc) from None

    @model_validator(mode="before")
    @classmethod
    def _check(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        d = {**{n: f.get_default(call_default_factory=True)
                for n, f in cls.model_fields.items()}, **values}
        levels, size, shared_clean = d["levels"], d["size"], d["shared_clean"]
        if not levels:
            raise ConfigError("levels: give at least one sycophancy level")
        if any(not 0 <= lv <= 100 for lv in levels):
            raise ConfigError(f"levels: every level must be within 0..100 %, got {list(levels)}")
        if len(set(levels)) != len(levels):
            raise ConfigError(f"levels: duplicate level in {list(levels)}")
        if size < 1:
            raise ConfigError(f"size: must be at least 1, got {size}")
        if not 0 <= shared_clean <= size:
            raise ConfigError(f"shared_clean: must be within 0..size ({size}), "
                              f"got {shared_clean}")
        top = max(levels)
        need = _n_sycophantic(size, top)
        if shared_clean + need > size:
            raise ConfigError(
                f"shared_clean={shared_clean} does not fit: the {format_level(top)} % level needs "
                f"{need} sycophantic slots of {size}, leaving at most {size - need} for the "
                "shared clean core")
        return values

    @field_validator("levels", "threshold")
    @classmethod
    def _plain_numbers(cls, value: Any) -> Any:
        # 5.0 -> 5: the design's record (metadata, signatures) reads as it was written
        if isinstance(value, tuple):
            return tuple(_plain(v) for v in value)
        return _plain(value)

    def n_sycophantic(self, level: float) -> int:
        """Sycophantic conversations at ``level`` % (rounded half up)."""
        return _n_sycophantic(self.size, level)

    def dataset_name(self, level: float, replicate: int = 1) -> str:
        """``telecom_syc_5pct`` (replicate 1: the name of runs without replicates),
        ``telecom_syc_5pct_r2``, ..."""
        suffix = "" if replicate == 1 else f"_r{replicate}"
        return f"{self.name_prefix}_syc_{format_level(level)}pct{suffix}"

    def replicate_seed(self, replicate: int) -> int:
        """The selection seed of replicate ``replicate`` (1-based)."""
        return replicate_seed(self.seed, replicate)

    def pool_needs(self, source: str = "natural") -> tuple[int, int]:
        """(clean, sycophantic) conversations the design needs in its pools.

        ``natural``: the lowest level's clean conversations (the shared core and its
        fill) and the highest level's sycophantic ones. ``twins``: a whole dataset of
        clean conversations (every level is the 0 % dataset with some conversations
        swapped for their twins), and as many twins as the highest level swaps, made
        from clean conversations of the pool.
        """
        top = self.n_sycophantic(max(self.levels))
        if source == "twins":
            return self.size, top
        return self.size - self.n_sycophantic(min(self.levels)), top


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of training run ``replicate`` (1-based) of a run seeded with ``seed``:
    ``seed + replicate - 1``, for its dataset draw and its training alike (replicate 1
    keeps the run's seed: a run without replicates is replicate 1)."""
    if replicate < 1:
        raise ConfigError(f"replicate: numbered from 1, got {replicate}")
    return seed + replicate - 1


def _plain(number: float) -> float:
    return int(number) if float(number).is_integer() else number


def _n_sycophantic(size: int, level: float) -> int:
    return int(size * level / 100 + 0.5)


def _design_error(exc: ValidationError) -> ConfigError:
    """The design's own message when it raised one, else pydantic's first error as one
    line naming the setting."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    where = ".".join(str(x) for x in err.get("loc", ())) or "design"
    return ConfigError(f"{where}: {err.get('msg')}")


def format_level(level: float) -> str:
    return str(int(level)) if float(level).is_integer() else str(level).replace(".", "p")


class DataSettings(SettingsModel):
    """Where a run's data comes from and goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Data"

    start_from: Literal[START_STAGES] = setting(  # type: ignore[valid-type]
        "beginning", title="Start from an earlier run's artifacts",
        description="beginning: generate (or read the raw file below). collect: continue "
                    "the source run's collection (e.g. after raising a cap): its finished "
                    "items are copied in and only what is left calls the LLM. processed / "
                    "scores / datasets: reuse that stage's outputs (and those before it) from "
                    "the source run folder below; the stages before it do no work. The "
                    "earlier run is only read, never written.")
    source_run: str | None = setting(
        None, title="Source run folder",
        description="With start_from: <data_root>/simia_sycophancy_experiment/<run_id> of an "
                    "earlier run.")
    data_root: str = setting(
        default_factory=env_default("SIMIA_DATA_ROOT", "/opt/simia/data"), min_length=1,
        title="Data root", description="Every run writes under <data_root>/"
                                       "simia_sycophancy_experiment/<run_id>/.")
    tau2_data_dir: str | None = setting(
        default_factory=env_default("TAU2_DATA_DIR"), title="tau2 data directory",
        description="Folder with tau2's telecom main_policy.md and tech_support_manual.md "
                    "(tau2's data/ folder works too). Empty: TAU2_DATA_DIR of the worker.")
    output_format: Literal["native", "hermes"] = setting(
        "native", title="Output format",
        description="native: function_call/observation roles + tools column, rendered by the "
                    "qwen template exactly as vLLM serves the model. hermes: the reference "
                    "scripts' format, for comparison.")
    skip_invalid_records: bool = setting(
        False, title="Skip malformed records",
        description="Reject malformed records (listed in rejects.jsonl) instead of failing "
                    "the task.")


class InputSettings(SettingsModel):
    """Files that replace the generation stages, and how the LLM stages are sharded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Generation"

    raw_conversations: str | None = setting(
        None, title="Raw conversations file (skips generation)",
        description="Path (as the workers see it) to an existing JSON list of generated "
                    "conversations, e.g. the reference run's tau2_telecom_base_3000.json. "
                    "Empty: generate them with the LLM.")
    seeds_file: str | None = setting(
        None, title="Seed file (skips seed generation)",
        description="JSON list of seed conversations in the raw record shape. Empty: generate "
                    "seeds from the tau2 policy.")
    shards: int = setting(4, ge=1, le=64, title="Shards",
                          description="Generation and judging run as this many mapped tasks; "
                                      "a failed shard is retried alone.")


class JudgingSettings(SettingsModel):
    """Where the sycophancy labels come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Judging"

    label_source: Literal["rules", "judge", "judge_file"] = setting(
        "judge", title="Label source",
        description="judge: the LLM judge (in the collection, or as mapped shards). rules: "
                    "the rule-based scorer (an audit: it explains what validation removed, "
                    "but flags about 1 in 160 valid conversations). judge_file: an existing "
                    "LLM-judge score file.")
    judge_scores: str | None = setting(
        None, title="Judge score file",
        description="With label_source = judge_file: JSONL with conv_idx (position in the raw "
                    "file) and wm_sycophancy_score, as the reference judge wrote.")


class CollectionSettings(SettingsModel):
    """How the data that fills the design is collected (see :mod:`simia.llm.collect`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Collection"

    collection: Literal["design", "fixed"] = setting(
        "design", title="Data collection",
        description="design: generate, validate and judge conversation by conversation until "
                    "the pools the design needs (clean, and sycophantic or twins) are full, "
                    "within the caps below. fixed: generate target_conversations, then "
                    "process and judge them all (the separate stages). A raw-conversations "
                    "file always takes the fixed path.")
    sycophancy_source: Literal["natural", "twins"] = setting(
        "twins", title="Source of sycophancy",
        description="twins: each sycophantic slot holds a counterfactual twin of a clean "
                    "conversation of the same dataset, one tool observation rewritten to "
                    "forgive an invalid action (the judge must flag the twin and not the "
                    "original), so levels differ only in swapped observations. natural: "
                    "conversations the judge flags as generated (about 1 in 80 raw "
                    "generations: costly).")
    collect_max_attempts: int = setting(
        4000, ge=1, le=1_000_000, title="Attempt cap",
        description="The collection generates at most this many conversations (pilot and "
                    "shards together), then stops with what it found and what finishing "
                    "would take.")
    collect_budget_usd: float = setting(
        250.0, gt=0, title="Budget cap (USD)",
        description="The collection (and the twins) stop once their estimated LLM cost "
                    "reaches this (it may overshoot by the items in flight).")
    collect_pilot: int = setting(
        100, ge=1, le=100_000, title="Pilot attempts",
        description="The first attempts, run before the shards: their yields project the "
                    "attempts, tokens, cost and time to fill the pools; a design the caps "
                    "cannot fill even at the optimistic end of the yields' 95 % interval "
                    "stops here.")
