"""Evaluation settings: tau2-bench (or the CI evaluator) on every level's server."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from simia.redaction import is_secret_key
from simia.settings.fields import SettingsModel, env_default, setting

__all__ = ["EvalSettings", "EvaluationConnection", "default_evaluator_image"]

def default_evaluator_image() -> str:
    """``SIMIA_EVALUATOR_IMAGE``, else the image of the default evaluator."""
    tau2 = env_default("SIMIA_EVALUATOR", "tau2")() == "tau2"
    return env_default("SIMIA_EVALUATOR_IMAGE",
                       "simia/evaluator:tau2" if tau2 else "simia/evaluator:cpu")()


class EvalSettings(SettingsModel):
    """The evaluation of every level of a run (identical across levels)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Evaluation"

    evaluator: Literal["tau2", "simia-ci"] = setting(
        default_factory=env_default("SIMIA_EVALUATOR", "tau2"), title="Evaluator",
        description="tau2: tau2-bench v1.0.1 (docker/evaluator). simia-ci: our small "
                    "tau2-format evaluator for machines where tau2 cannot be installed (not "
                    "comparable with tau2 scores).")
    image: str = setting(default_factory=default_evaluator_image, param="evaluator_image",
                         min_length=1, title="Evaluator image",
                         description="simia/evaluator:tau2 or simia/evaluator:cpu.")
    domain: Literal["telecom"] = setting("telecom", param="eval_domain", title="tau2 domain",
                                         description="The domain the data simulates.")
    task_split: Literal["base", "train", "test", "small"] = setting(
        "base", title="Task split", description="tau2 telecom: base 114 tasks, train 74, test "
                                                "40, small 20.")
    num_tasks: int = setting(0, ge=0, title="Tasks", description="0: every task of the split.")
    num_trials: int = setting(4, ge=1, le=32, title="Trials",
                              description="Trials per task (pass^k up to k = trials).")
    user_llm: str = setting("gpt-4.1-2025-04-14", min_length=1, title="User simulator model",
                            description="litellm model name.")
    user_llm_args: dict[str, Any] = setting(
        default_factory=dict, title="User simulator arguments",
        description='e.g. {"api_base": "http://host:8001/v1"}; temperature is set below. No '
                    "keys here.")
    agent_temperature: float = setting(0.0, ge=0, le=2, title="Agent temperature",
                                       description="Always passed explicitly.")
    user_temperature: float = setting(0.0, ge=0, le=2, title="User temperature",
                                      description="Always passed explicitly.")
    agent_llm_args: dict[str, Any] = setting(default_factory=dict,
                                             title="Agent request arguments",
                                             description='e.g. {"top_p": 0.9}.')
    # Caps on one reply. The longest agent turn of the simulated telecom training data is
    # about 950 characters (~250 tokens: a short answer or one tool call with a brief
    # <think> block), so 1024 leaves room for several tool calls in one turn while a model
    # that never emits its stop token costs 1024 tokens per turn, not the context length.
    agent_max_tokens: int = setting(
        1024, ge=0, title="Agent max tokens per reply",
        description="max_tokens of every agent request (0: no cap; a max_tokens in the agent "
                    "request arguments wins). Without a cap a server generates up to the "
                    "context length when a model does not stop.")
    user_max_tokens: int = setting(
        1024, ge=0, title="User simulator max tokens per reply",
        description="max_tokens of every user simulator request (0: no cap; a max_tokens in "
                    "the user simulator arguments wins). A reasoning model counts its "
                    "reasoning in it.")
    max_concurrency: int = setting(8, param="eval_max_concurrency", ge=1, le=128,
                                   title="Concurrent simulations",
                                   description="tau2's --max-concurrency.")
    max_steps: int = setting(200, param="eval_max_steps", ge=1, title="Max steps",
                             description="Per simulation.")
    max_errors: int = Field(10, ge=1)
    seed: int = setting(300, param="eval_seed", title="Evaluation seed",
                        description="tau2's --seed.")
    tau2_data_dir: str | None = setting(None, param="eval_data_dir",
                                        title="tau2 data for the evaluator",
                                        description="Empty: the data inside the evaluator "
                                                    "image.")
    timeout_h: float = setting(12, param="eval_timeout_h", gt=0,
                               title="Evaluation timeout (h)", description="Per level.")

    @property
    def timeout_s(self) -> float:
        """The evaluation's time limit in seconds."""
        return self.timeout_h * 3600

    @field_validator("agent_llm_args", "user_llm_args")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in value if is_secret_key(k)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: keys and tokens go in Airflow connections, "
                             "not in LLM arguments (they would be shown in the UI and logs)")
        return value


class EvaluationConnection(SettingsModel):
    """The Airflow connection of tau2's user simulator."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Evaluation"

    user_llm_conn_id: str = setting("openai_default", title="User simulator connection",
                                    description="Its password is passed as OPENAI_API_KEY "
                                                "(never logged).")
