"""Data settings: where a run's data comes from, the labels, and the dataset design."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from simia.errors import ConfigError
from simia.layout import START_STAGES
from simia.settings.fields import SettingsModel, env_default, setting

__all__ = ["DataSettings", "DatasetDesign", "InputSettings", "JudgingSettings",
           "format_level", "replicate_seed"]

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
        description="beginning: generate (or read the raw file below). processed / scores / "
                    "datasets: reuse that stage's outputs (and those before it) from the "
                    "source run folder below; the stages before it do no work. The earlier "
                    "run is only read, never written.")
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
        "rules", title="Label source",
        description="rules: the rule-based scorer. judge: the LLM judge (mapped shards). "
                    "judge_file: an existing LLM-judge score file.")
    judge_scores: str | None = setting(
        None, title="Judge score file",
        description="With label_source = judge_file: JSONL with conv_idx (position in the raw "
                    "file) and wm_sycophancy_score, as the reference judge wrote.")
