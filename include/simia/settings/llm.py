"""LLM settings: the model and how to reach it, prices, and what generation and seed
generation ask of it."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from simia.settings.fields import SettingsModel, from_setting, setting

__all__ = ["DEFAULT_MODEL", "GenerationSettings", "LLMConnection", "LLMSettings",
           "ModelPrice", "PriceTable", "SONNET_4_PRICES", "SeedSettings", "SimulatorMode"]

#: Claude Sonnet 4 on Bedrock (on-demand, us-east-1), US dollars per million tokens: $3
#: input, $15 output, $0.30 read from the prompt cache, $3.75 written to it (5-minute cache)
SONNET_4_PRICES = {"input_per_mtok": 3.0, "output_per_mtok": 15.0,
                   "cache_read_per_mtok": 0.30, "cache_write_per_mtok": 3.75}
#: Anthropic's prompt-cache prices relative to the input price (read 0.1x, 5-minute write
#: 1.25x): what a price without its own cache prices uses
CACHE_READ_FACTOR = 0.1
CACHE_WRITE_FACTOR = 1.25


class ModelPrice(BaseModel):
    """One model's prices in US dollars per million tokens.

    ``cache_read_per_mtok`` / ``cache_write_per_mtok`` price the input tokens read from /
    written to the prompt cache (Bedrock's ``cacheReadInputTokens`` /
    ``cacheWriteInputTokens``). Left out (price tables written before prompt caching):
    0.1x and 1.25x the input price, Anthropic's ratios on Bedrock.
    """

    model_config = ConfigDict(extra="forbid")
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cache_read_per_mtok: float | None = Field(None, ge=0)
    cache_write_per_mtok: float | None = Field(None, ge=0)

    @property
    def cache_read(self) -> float:
        """The cache-read price (given, else derived from the input price)."""
        if self.cache_read_per_mtok is None:
            return self.input_per_mtok * CACHE_READ_FACTOR
        return self.cache_read_per_mtok

    @property
    def cache_write(self) -> float:
        """The cache-write price (given, else derived from the input price)."""
        if self.cache_write_per_mtok is None:
            return self.input_per_mtok * CACHE_WRITE_FACTOR
        return self.cache_write_per_mtok


class PriceTable(BaseModel):
    """Prices by model id; ``default`` applies to any model not listed."""

    model_config = ConfigDict(extra="forbid")
    default: ModelPrice = ModelPrice(**SONNET_4_PRICES)
    models: dict[str, ModelPrice] = {}

    def price(self, model_id: str) -> ModelPrice:
        return self.models.get(model_id, self.default)

    def cost(self, model_id: str, input_tokens: int, output_tokens: int,
             cache_read_tokens: int = 0, cache_write_tokens: int = 0) -> float:
        """US dollars for these token counts: uncached input, output, and input read
        from / written to the prompt cache, each at its own price."""
        p = self.price(model_id)
        return (input_tokens * p.input_per_mtok + output_tokens * p.output_per_mtok
                + cache_read_tokens * p.cache_read + cache_write_tokens * p.cache_write) / 1e6


DEFAULT_MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"


class LLMSettings(SettingsModel):
    """How to reach the model and how hard to try. Every field has a working default
    for Bedrock with Claude Sonnet 4."""

    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "LLM"

    backend: Literal["bedrock", "openai"] = setting(
        "bedrock", param="llm_backend", cli="backend", title="LLM backend",
        description="bedrock: Converse API through the AWS connection. openai: an "
                    "OpenAI-compatible server (e.g. a local vLLM).")
    #: always a model id once validated (empty: Claude Sonnet 4 on Bedrock)
    model_id: str | None = setting(None, validate_default=True, title="Model",
                                   description=f"Empty: {DEFAULT_MODEL}. For openai: the "
                                               "served model's name.")
    #: Bedrock region; None: the connection's, else ``AWS_REGION``/``AWS_DEFAULT_REGION``,
    #: else us-east-1
    region: str | None = None
    #: Bedrock endpoint override (tests, VPC endpoints); None: the connection's/AWS default
    endpoint_url: str | None = None
    base_url: str | None = setting(None, param="openai_base_url", cli="base_url",
                                   title="OpenAI-compatible base URL",
                                   description="e.g. http://127.0.0.1:8000/v1")
    #: environment variable holding the OpenAI-compatible server's API key, if it needs one
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = setting(8, param="llm_concurrency", cli="concurrency", ge=1, le=256,
                               title="Calls in flight per shard",
                               description="Concurrent LLM calls of one shard task (shards x "
                                           "this = the run's total); throttling is retried "
                                           "with backoff.")
    timeout_s: float = setting(300.0, param="llm_timeout_s", cli="timeout", gt=0,
                               title="Seconds per call",
                               description="A call that takes longer is retried (long "
                                           "generations need minutes).")
    connect_timeout_s: float = Field(10.0, gt=0)
    #: our attempts per call (each may include botocore's own quick retries)
    max_attempts: int = Field(6, ge=1, le=50)
    botocore_max_attempts: int = Field(3, ge=1, le=20)
    #: botocore's retry mode. standard (default): a few quick retries, and our pacer
    #: (``learn_rps``) paces after throttling. adaptive: botocore's own client-side rate
    #: limiter instead (cuts to 70 % of its send rate on every throttle, then climbs
    #: back on a cubic curve; on a steady quota it stays well below it)
    botocore_retry_mode: Literal["adaptive", "standard"] = "standard"
    #: ceiling on HTTP requests (attempts) per second of this client, over all its
    #: threads: a share of the account's quota for the model (one client per CLI
    #: process or Airflow task, so divide by the shards running at once). None: none
    max_rps: float | None = Field(None, gt=0)
    #: learn the sustainable request rate from throttling and pace all threads at it
    #: (see :class:`simia.llm.pacing.RatePacer`); off: only ``max_rps`` paces. None
    #: (default): on with the standard retry mode, off with adaptive (two limiters
    #: reacting to the same throttles cut the rate twice)
    learn_rps: bool | None = None

    @property
    def learns_rps(self) -> bool:
        """Whether the pacer learns from throttling (``learn_rps`` resolved)."""
        if self.learn_rps is None:
            return self.botocore_retry_mode == "standard"
        return self.learn_rps
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    #: log full prompts and replies (off: they can be large and may hold customer data)
    log_prompts: bool = False
    prices: PriceTable = PriceTable()
    prompt_caching: bool = setting(
        True, param="llm_prompt_caching", cli="prompt_caching", title="Prompt caching",
        description="Mark the shared start of every prompt (the judge's rubric, policy and "
                    "tool schemas; the generator's instructions, rules and tool list) with "
                    "a Bedrock cache point: later calls read it from the cache at a tenth "
                    "of the input price. Off: no cache point. The OpenAI-compatible "
                    "backend ignores it.")
    #: 0.25: an LLM stage tolerates a few failed items (a short outage, a handful of
    #: refused prompts: they are recorded and retried on the next run) but not a failure
    #: mode. With a quarter of the items failed something systematic is wrong (quota,
    #: endpoint, prompts), and going on would silently shrink or skew what the
    #: experiment is built from (a judge shard with a third of its labels missing)
    max_failed_share: float = setting(
        0.25, param="llm_max_failed_share", cli="max_failed_share", ge=0, le=1,
        title="Largest share of failed items",
        description="An LLM stage (seeds, generation, judge, collection) fails when every "
                    "item failed or more than this share of them did (generation and "
                    "collection: failed calls, when a shard ends short of its target). "
                    "Recorded failures are retried when the stage runs again.")
    #: the shortest prefix (in tokens, estimated at 4 characters a token) that gets a
    #: cache point: the model's minimum on Bedrock (Claude Sonnet 4: 1,024; some models
    #: need more), under which Bedrock does not cache it
    cache_min_tokens: int = Field(1024, ge=1)

    @field_validator("model_id")
    @classmethod
    def _default_model(cls, value: str | None) -> str:
        return value or DEFAULT_MODEL


SimulatorMode = Literal["base", "strict", "sycophantic"]


class GenerationSettings(SettingsModel):
    """What to generate. ``seed`` fixes seed sampling and item ids."""

    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Generation"

    target: int = setting(100, param="target_conversations", cli="target", ge=1,
                          title="Target conversations",
                          description="Parseable conversations to generate (all shards "
                                      "together).")
    max_attempts: int = setting(0, ge=0, title="Attempt bound",
                                description="At most this many conversations are tried. 0: "
                                            "3 x target + 10.")
    mode: SimulatorMode = setting("base", param="simulator_mode", cli="mode",
                                  title="Simulator mode",
                                  description="base: no extra instructions; strict: the "
                                              "simulated backend never repairs invalid calls; "
                                              "sycophantic: it may forgive them.")
    seed: int = from_setting("seed", 42)
    max_tokens: int = Field(16384, ge=256, le=16384)
    temperature: float = Field(1.0, ge=0, le=1)
    max_rounds: int = Field(5, ge=1, le=10, description="calls per item incl. continuations")
    show_tool_schemas: bool = setting(
        False, title="Show tool parameter schemas",
        description="Put full parameter schemas in the generation prompt (fewer conversations "
                    "fail validation; longer prompts). Off = the reference's behaviour.")
    prompts_dir: str | None = None
    domain: str = "telecom"

    @model_validator(mode="after")
    def _bound(self) -> GenerationSettings:
        if self.max_attempts and self.max_attempts < self.target:
            raise ValueError(f"max_attempts ({self.max_attempts}) is below target "
                             f"({self.target})")
        return self

    @property
    def attempts_bound(self) -> int:
        return self.max_attempts or 3 * self.target + 10


class SeedSettings(SettingsModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Generation"

    n_seeds: int = setting(50, ge=1, title="Seeds to generate",
                           description="Used when no seed file is given.")
    seed: int = from_setting("seed", 42)
    tries: int = Field(3, ge=1, le=10, description="LLM calls per seed before giving up")
    max_tokens: int = Field(8192, ge=256, le=16384)
    temperature: float = Field(1.0, ge=0, le=1)
    prompts_dir: str | None = None


class LLMConnection(SettingsModel):
    """The Airflow connection of the Bedrock backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "LLM"

    aws_conn_id: str = setting("aws_default", min_length=1, title="AWS connection",
                               description="Connection with Bedrock access (region and "
                                           "endpoint_url in its extras).")
