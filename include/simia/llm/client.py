"""One LLM client for every stage: Bedrock Converse (default) or an OpenAI-compatible server.

- **Backends.** :class:`BedrockBackend` wraps a boto3 ``bedrock-runtime`` client. Inside
  Airflow that client comes from the amazon provider's ``BedrockRuntimeHook`` (region
  and ``endpoint_url`` from the connection); outside Airflow, :func:`make_client` builds
  it with plain boto3. :class:`OpenAIBackend` talks to any ``/v1/chat/completions``
  server (e.g. a local vLLM) for users without Bedrock.
- **Retries, two layers.** botocore's retries (``botocore_retry_mode``: *standard* by
  default, *adaptive* available) under our own loop, which retries throttling, timeouts,
  connection errors and 5xx with exponential backoff and full jitter up to
  ``max_attempts``. Errors that retrying cannot fix split in two: item errors (e.g. a
  ``ValidationException`` for one prompt) fail that item; configuration errors (bad
  credentials, access denied, unknown model) abort the stage with :class:`LLMFatalError`.
- **Pacing.** A :class:`~simia.llm.pacing.RatePacer` shared by the client's threads
  spaces every HTTP attempt (ours and botocore's retries) at a rate learnt from
  throttling (AIMD: cut to just below the rate the service accepted, probe upwards
  while the rate is what limits us), capped by ``max_rps`` when set. This does what
  botocore's adaptive mode does, without its deep cuts, so *standard* is the default;
  with *adaptive* chosen, the pacer only applies ``max_rps`` unless ``learn_rps`` is set.
- **Continuation.** When a reply stops at ``max_tokens`` the client can ask for more
  (the partial text goes back as an assistant turn plus a "continue" message).
- **Prompt caching** (``prompt_caching``, on by default). The Bedrock backend ends the
  system prompt (a stage's shared part) with a ``{"cachePoint": {"type": "default"}}``
  block, and turns every :data:`~simia.llm.prompts.CACHE_POINT` marker a template put
  in a message into one; Bedrock then reads that prefix from its cache (5 minutes,
  refreshed on every hit). A point whose prefix is under ``cache_min_tokens`` (1,024,
  Claude Sonnet 4's minimum; estimated at 4 characters a token) is left out: Bedrock
  would not cache it (and may refuse the request). Off, and on the OpenAI-compatible
  backend, the markers are removed and no cache point is sent: the model sees the same
  text either way.
- **Accounting.** Every HTTP request is counted, botocore's own retries included (see
  :class:`BedrockBackend`), with its tokens (uncached input, output, cache read, cache
  write: Bedrock's ``inputTokens`` counts only the input that was neither read from nor
  written to the cache), duration and error class: in the stage's :class:`Usage` (for
  progress lines) and in the call's own, which :class:`Completion` and
  :class:`LLMCallError` carry (``usage``) so that a stage's records keep what each item
  cost, failed calls included, across re-runs. Every call logs one line
  (stage, item id, round, attempt, seconds, tokens, stop reason or error class) with no
  prompt text unless ``log_prompts`` is set, and never credentials.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


from simia.settings.llm import LLMSettings
from simia.errors import SimiaError
from simia.llm.accounting import Usage
from simia.llm.pacing import RatePacer
from simia.llm.prompts import CACHE_POINT, split_cache_points, strip_cache_points

log = logging.getLogger("simia.llm")


DEFAULT_REGION = "us-east-1"
CONTINUE_PROMPT = ("Continue exactly where you stopped. Do not repeat anything you already "
                   "wrote and do not add any preamble.")


class LLMFatalError(SimiaError):
    """A configuration problem no retry can fix (credentials, access, model id, URL)."""


class LLMCallError(Exception):
    """One item's call failed for good (retries exhausted, or the request was refused).
    ``usage``: what the failed call's HTTP requests cost (:meth:`Usage.record`)."""

    def __init__(self, error_class: str, message: str, attempts: int,
                 usage: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.attempts = attempts
        self.usage: dict[str, Any] = usage or {}


@dataclass(frozen=True)
class Reply:
    """One call's reply. ``input_tokens``: input neither read from nor written to the
    prompt cache (Bedrock's ``inputTokens``); the whole input is the sum of the three."""

    text: str
    stop_reason: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


ErrorKind = Literal["retry", "item", "fatal"]


class Backend(Protocol):
    """Sends one request. ``system`` and message texts may hold
    :data:`~simia.llm.prompts.CACHE_POINT` markers: a backend turns them into cache
    points or removes them. A backend whose transport retries on its own (botocore) also
    has ``retried_attempts()``: after each ``send`` (returned or raised) in a thread, the
    outcome (None: success, else the error class) of every HTTP attempt of that send
    before its last one."""

    model_id: str

    def send(self, system: str | None, messages: list[dict[str, str]], max_tokens: int,
             temperature: float) -> Reply: ...

    def classify(self, exc: BaseException) -> tuple[str, ErrorKind] | None:
        """(error class, what to do), or None when ``exc`` is not a call error."""
        ...


# --------------------------------------------------------------------------- Bedrock

_RETRY_CODES = frozenset({"ThrottlingException", "TooManyRequestsException",
                          "ServiceUnavailableException", "InternalServerException",
                          "ModelTimeoutException", "ModelNotReadyException",
                          "RequestTimeout", "RequestTimeoutException"})
_FATAL_CODES = frozenset({"AccessDeniedException", "UnrecognizedClientException",
                          "ResourceNotFoundException", "InvalidSignatureException",
                          "ExpiredTokenException", "UnauthorizedException",
                          "IncompleteSignature", "InvalidClientTokenId"})


def botocore_config(settings: LLMSettings) -> Any:
    """The botocore ``Config`` every Bedrock client of ours uses (plain boto3 or the hook).

    Two settings cut the client's CPU per call, which is what limits throughput at high
    concurrency (32 threads share one interpreter lock; ``benchmarks/bench_llm.py``):

    - a fixed ``user_agent``: by default botocore assembles the User-Agent header from
      about 30 sanitised components twice per request (~0.4 ms of CPU, 10-12 % of a
      call's client CPU); a fixed string goes out as it is. The Airflow hook still
      appends its own ``user_agent_extra`` (Airflow and provider versions, caller).
    - ``parameter_validation=False``: :class:`BedrockBackend` builds every request from
      a fixed shape, so botocore's walk over the request against the Converse model
      finds nothing; Bedrock still validates it (a ``ValidationException`` fails that
      item).
    """
    import botocore
    from botocore.config import Config

    import simia

    return Config(
        retries={"mode": settings.botocore_retry_mode,
                 "total_max_attempts": settings.botocore_max_attempts},
        read_timeout=settings.timeout_s,
        connect_timeout=settings.connect_timeout_s,
        max_pool_connections=settings.concurrency + 4,
        user_agent=f"Botocore/{botocore.__version__} simia/{simia.__version__}",
        parameter_validation=False,
    )



_THROTTLE_CODES = frozenset({"ThrottlingException", "TooManyRequestsException",
                             "Throttling", "ThrottledException", "RequestLimitExceeded"})


#: a Converse cache point (botocore's ``CachePointBlock``; ``default``: the 5-minute cache)
CACHE_POINT_BLOCK: dict[str, Any] = {"cachePoint": {"type": "default"}}


class BedrockBackend:
    """Bedrock Converse through a boto3 ``bedrock-runtime`` client.

    With ``prompt_caching``, the system prompt ends with a cache point and each
    :data:`~simia.llm.prompts.CACHE_POINT` marker in a message becomes one, unless the
    prefix before it is under ``cache_min_tokens`` (estimated as characters / 4, rounded
    up: the rule of ``tests/converse_server.py``); without, the markers are removed.
    With a ``pacer``, every HTTP attempt the client makes (botocore's own retries
    included) waits for its slot (botocore's ``before-send`` event) and reports whether
    it was throttled (``needs-retry``), through the client's event hooks.

    **Counting botocore's retries.** botocore retries throttling and 5xx a few times
    inside one ``converse`` call (``botocore_max_attempts``), invisible to
    :class:`LLMClient`'s loop. We keep those quick retries (turning them off would leave
    only our slower, backed-off loop, and ``botocore_retry_mode`` / ``botocore_max_attempts``
    would lose their meaning) and count them instead: the ``needs-retry`` hook, which
    botocore fires after every HTTP attempt in the thread that made the call, appends
    the attempt's outcome (None, or its error class) to a thread-local list; after
    ``send``, :meth:`retried_attempts` hands the client the attempts before the last
    one (the last is the reply or the exception the client sees). So every HTTP request
    the endpoint receives is one call in the accounting.
    """

    def __init__(self, client: Any, model_id: str, pacer: RatePacer | None = None, *,
                 prompt_caching: bool = False, cache_min_tokens: int = 1024) -> None:
        self.client = client
        self.model_id = model_id
        self.pacer = pacer
        self.prompt_caching = prompt_caching
        self.cache_min_tokens = cache_min_tokens
        self._local = threading.local()
        self._paced = pacer is not None and pacer.active
        events = client.meta.events
        if self._paced:
            events.register("before-send.bedrock-runtime", self._before_send,
                            unique_id=f"simia-pacer-send-{id(self)}")
        events.register("needs-retry.bedrock-runtime", self._after_attempt,
                        unique_id=f"simia-pacer-seen-{id(self)}")

    def _before_send(self, **_: Any) -> None:
        assert self.pacer is not None
        self.pacer.acquire()

    def _after_attempt(self, response: Any = None, caught_exception: Any = None,
                       **_: Any) -> None:
        """Record this attempt's outcome for :meth:`retried_attempts` and tell the pacer
        whether it was throttled (no response: a connection error or timeout, neither).
        Returns None: botocore reads a value as a retry delay."""
        code, status = None, 0
        if response is not None:
            http, parsed = response
            status = getattr(http, "status_code", 0) or 0
            if isinstance(parsed, dict):
                code = (parsed.get("Error") or {}).get("Code")
        outcomes = getattr(self._local, "attempts", None)
        if outcomes is not None:
            if caught_exception is not None:
                verdict = self.classify(caught_exception)
                outcomes.append(verdict[0] if verdict else type(caught_exception).__name__)
            elif status >= 300 or code:
                outcomes.append(code or f"HTTP{status}")
            else:
                outcomes.append(None)
        if response is not None and self._paced:
            assert self.pacer is not None
            self.pacer.record(status == 429 or code in _THROTTLE_CODES)

    def retried_attempts(self) -> list[str | None]:
        """The outcomes (error class, or None) of the HTTP attempts of this thread's
        last :meth:`send` before its last one (botocore retried them); cleared here."""
        retried = getattr(self._local, "retried", None) or []
        self._local.retried = []
        return retried

    def _cacheable(self, chars: int) -> bool:
        """Whether a prefix of ``chars`` characters is long enough for a cache point."""
        return -(-chars // 4) >= self.cache_min_tokens

    def _blocks(self, text: str, chars: int) -> tuple[list[dict[str, Any]], int]:
        """(content blocks of ``text``, characters sent so far) given ``chars`` sent
        before it: its parts between markers, with a cache point between two parts when
        caching and the prefix is long enough."""
        if CACHE_POINT not in text:
            return [{"text": text}], chars + len(text)
        if not self.prompt_caching:
            text = strip_cache_points(text)
            return [{"text": text}], chars + len(text)
        blocks: list[dict[str, Any]] = []
        for i, part in enumerate(split_cache_points(text)):
            if i and blocks and blocks[-1] is not CACHE_POINT_BLOCK \
                    and self._cacheable(chars):
                blocks.append(CACHE_POINT_BLOCK)
            if part:
                blocks.append({"text": part})
                chars += len(part)
        return blocks, chars

    def request(self, system: str | None, messages: list[dict[str, str]], max_tokens: int,
                temperature: float) -> dict[str, Any]:
        """The keyword arguments of ``converse`` for this call."""
        blocks, chars = self._blocks(system, 0) if system else ([], 0)
        if blocks and self.prompt_caching and blocks[-1] is not CACHE_POINT_BLOCK \
                and self._cacheable(chars):
            blocks.append(CACHE_POINT_BLOCK)
        content = []
        for m in messages:
            message_blocks, chars = self._blocks(m["text"], chars)
            content.append({"role": m["role"], "content": message_blocks})
        request: dict[str, Any] = {
            "modelId": self.model_id, "messages": content,
            "inferenceConfig": {"maxTokens": max_tokens, "temperature": temperature},
        }
        if blocks:
            request["system"] = blocks
        return request

    def send(self, system: str | None, messages: list[dict[str, str]], max_tokens: int,
             temperature: float) -> Reply:
        self._local.attempts = []
        try:
            resp = self.client.converse(**self.request(system, messages, max_tokens,
                                                       temperature))
        finally:
            self._local.retried = self._local.attempts[:-1]
            self._local.attempts = None
        content = resp.get("output", {}).get("message", {}).get("content", [])
        text = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        usage = resp.get("usage", {})
        return Reply(text, resp.get("stopReason", ""), int(usage.get("inputTokens", 0)),
                     int(usage.get("outputTokens", 0)),
                     int(usage.get("cacheReadInputTokens", 0) or 0),
                     int(usage.get("cacheWriteInputTokens", 0) or 0))

    def classify(self, exc: BaseException) -> tuple[str, ErrorKind] | None:
        from botocore import exceptions as bx

        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            code = err.get("Code") or "ClientError"
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in _RETRY_CODES or status == 429 or status >= 500:
                return code, "retry"
            if code in _FATAL_CODES or status in (401, 403):
                return code, "fatal"
            return code, "item"
        if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectTimeoutError)):
            return "Timeout", "retry"
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError,
                            bx.HTTPClientError)):
            return type(exc).__name__, "retry"
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError,
                            bx.NoRegionError, bx.ParamValidationError)):
            return type(exc).__name__, "fatal"
        return None


# --------------------------------------------------------------------------- OpenAI-compatible

class _HTTPStatusError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` server (vLLM, llama.cpp, OpenAI...).

    It has no cache points: cache-point markers are removed (servers such as vLLM cache
    shared prefixes on their own, and report no cache tokens)."""

    def __init__(self, base_url: str, model_id: str, *, api_key: str | None = None,
                 timeout_s: float = 300.0, connect_timeout_s: float = 10.0,
                 concurrency: int = 8, pacer: RatePacer | None = None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model_id = model_id
        self.pacer = pacer
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=concurrency + 4,
                                max_keepalive_connections=concurrency + 4))

    def send(self, system: str | None, messages: list[dict[str, str]], max_tokens: int,
             temperature: float) -> Reply:
        chat = [{"role": "system", "content": strip_cache_points(system)}] if system else []
        chat += [{"role": m["role"], "content": strip_cache_points(m["text"])}
                 for m in messages]
        if self.pacer is not None:
            self.pacer.acquire()
        resp = self._http.post("/chat/completions", json={
            "model": self.model_id, "messages": chat, "max_tokens": max_tokens,
            "temperature": temperature})
        if self.pacer is not None:
            self.pacer.record(resp.status_code == 429)
        if resp.status_code != 200:
            raise _HTTPStatusError(resp.status_code, resp.text)
        body = resp.json()
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        stop = "max_tokens" if choice.get("finish_reason") == "length" else "end_turn"
        return Reply(choice["message"].get("content") or "", stop,
                     int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    def classify(self, exc: BaseException) -> tuple[str, ErrorKind] | None:
        import httpx

        if isinstance(exc, _HTTPStatusError):
            if exc.status == 429:
                return "Throttling", "retry"
            if exc.status >= 500 or exc.status == 408:
                return f"HTTP{exc.status}", "retry"
            if exc.status in (401, 403, 404):
                return f"HTTP{exc.status}", "fatal"
            return f"HTTP{exc.status}", "item"
        if isinstance(exc, httpx.TimeoutException):
            return "Timeout", "retry"
        if isinstance(exc, httpx.TransportError):
            return type(exc).__name__, "retry"
        if isinstance(exc, (KeyError, IndexError, TypeError, ValueError)):
            return "MalformedResponse", "retry"
        return None


def make_client(settings: LLMSettings, *, bedrock_client: Any = None) -> LLMClient:
    """An :class:`LLMClient` for ``settings``. ``bedrock_client``: a ready boto3 client
    (Airflow passes the hook's); otherwise plain boto3 builds one. Either way the
    client gets a :class:`RatePacer` from ``max_rps``/``learn_rps`` (see its docs)."""
    pacer = RatePacer(settings.max_rps, learn=settings.learns_rps)
    if settings.backend == "openai":
        if not settings.base_url:
            raise LLMFatalError("llm: backend 'openai' needs base_url "
                                "(e.g. http://127.0.0.1:8000/v1)")
        backend: Backend = OpenAIBackend(
            settings.base_url, settings.model_id, api_key=os.environ.get(settings.api_key_env),
            timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s,
            concurrency=settings.concurrency, pacer=pacer)
    else:
        if bedrock_client is None:
            import boto3

            region = (settings.region or os.environ.get("AWS_REGION")
                      or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)
            bedrock_client = boto3.client("bedrock-runtime", region_name=region,
                                          endpoint_url=settings.endpoint_url,
                                          config=botocore_config(settings))
        backend = BedrockBackend(bedrock_client, settings.model_id, pacer,
                                 prompt_caching=settings.prompt_caching,
                                 cache_min_tokens=settings.cache_min_tokens)
    return LLMClient(backend, settings)


# --------------------------------------------------------------------------- the client

@dataclass(frozen=True)
class Completion:
    """A finished :meth:`LLMClient.complete`: the text of all rounds, ``parts`` (each
    round's text), the last round's stop reason, and ``usage`` (every HTTP request of
    every round, :meth:`Usage.record`)."""

    text: str
    stop_reason: str
    rounds: int
    attempts: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    parts: tuple[str, ...] = ()
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.stop_reason == "max_tokens"


class LLMClient:
    """Retrying, accounting, logging front of a :class:`Backend`; shared by threads."""

    def __init__(self, backend: Backend, settings: LLMSettings, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.backend = backend
        self.settings = settings
        self._sleep = sleep
        self._usage: dict[str, Usage] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def pacer(self) -> RatePacer | None:
        """The backend's request pacer, if it has one."""
        return getattr(self.backend, "pacer", None)

    def usage(self, stage: str) -> Usage:
        with self._lock:
            return self._usage.setdefault(stage, Usage())

    def usage_summary(self, stage: str) -> dict[str, Any]:
        return self.usage(stage).as_dict(self.settings.prices, self.model_id)

    def complete(self, stage: str, item_id: str, prompt: str, *, system: str | None = None,
                 max_tokens: int = 4096, temperature: float = 1.0, max_rounds: int = 1,
                 keep_going: Callable[[str], bool] | None = None) -> Completion:
        """Send ``prompt``; while the reply stops at ``max_tokens`` (and ``keep_going``
        of the text so far is true), ask for the rest, up to ``max_rounds`` calls.

        Raises :class:`LLMCallError` when a call fails for good, :class:`LLMFatalError`
        on configuration errors.
        """
        messages = [{"role": "user", "text": prompt}]
        text, attempts, tokens_in, tokens_out, cache_read, cache_write = "", 0, 0, 0, 0, 0
        reply = Reply("", "", 0, 0)
        tally = Usage()
        parts: list[str] = []
        for round_no in range(1, max_rounds + 1):
            try:
                reply, tries = self._call(stage, item_id, round_no, system, messages,
                                          max_tokens, temperature, tally)
            except LLMCallError as exc:
                exc.usage = tally.record(self.settings.prices, self.model_id)
                raise
            parts.append(reply.text)
            text += reply.text
            attempts += tries
            tokens_in += reply.input_tokens
            tokens_out += reply.output_tokens
            cache_read += reply.cache_read_tokens
            cache_write += reply.cache_write_tokens
            if (reply.stop_reason != "max_tokens" or not reply.text
                    or (keep_going is not None and not keep_going(text))):
                break
            messages += [{"role": "assistant", "text": reply.text},
                         {"role": "user", "text": CONTINUE_PROMPT}]
        return Completion(text, reply.stop_reason, round_no, attempts, tokens_in, tokens_out,
                          cache_read, cache_write, tuple(parts),
                          tally.record(self.settings.prices, self.model_id))

    def _retried(self, stage: Usage, tally: Usage) -> int:
        """Count the attempts the backend's transport retried on its own during the last
        ``send`` (botocore's), as failed calls; returns how many."""
        drain = getattr(self.backend, "retried_attempts", None)
        retried = drain() if drain is not None else []
        for error in retried:
            for usage in (stage, tally):
                usage.add_call(error=error)
        return len(retried)

    def _call(self, stage: str, item_id: str, round_no: int, system: str | None,
              messages: list[dict[str, str]], max_tokens: int,
              temperature: float, tally: Usage | None = None) -> tuple[Reply, int]:
        s = self.settings
        usage = self.usage(stage)
        tally = tally if tally is not None else Usage()
        if s.log_prompts:
            log.info("llm prompt stage=%s item=%s round=%d\n%s", stage, item_id, round_no,
                     strip_cache_points(messages[-1]["text"]))
        for attempt in range(1, s.max_attempts + 1):
            t0 = time.perf_counter()
            try:
                reply = self.backend.send(system, messages, max_tokens, temperature)
            except Exception as exc:  # noqa: BLE001 -- classified below, re-raised if unknown
                seconds = time.perf_counter() - t0
                retried = self._retried(usage, tally)
                verdict = self.backend.classify(exc)
                if verdict is None:
                    raise
                error_class, kind = verdict
                usage.add_call(seconds=seconds, error=error_class)
                tally.add_call(seconds=seconds, error=error_class)
                log.info("llm call stage=%s item=%s round=%d attempt=%d seconds=%.3f "
                         "error=%s%s", stage, item_id, round_no, attempt, seconds, error_class,
                         f" retried={retried}" if retried else "")
                if kind == "fatal":
                    raise LLMFatalError(f"llm: {self.model_id} refused the call "
                                        f"({error_class}): {exc}") from None
                if kind == "item":
                    raise LLMCallError(error_class, str(exc), attempt) from None
                if attempt == s.max_attempts:
                    raise LLMCallError(error_class, f"gave up after {attempt} attempts; "
                                       f"last error: {exc}", attempt) from None
                with self._lock:
                    jitter = self._rng.random()
                self._sleep(min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1))
                            * jitter)
                continue
            seconds = time.perf_counter() - t0
            retried = self._retried(usage, tally)
            for counted in (usage, tally):
                counted.add_call(input_tokens=reply.input_tokens,
                                 output_tokens=reply.output_tokens,
                                 cache_read_tokens=reply.cache_read_tokens,
                                 cache_write_tokens=reply.cache_write_tokens, seconds=seconds)
            log.info("llm call stage=%s item=%s round=%d attempt=%d seconds=%.3f in=%d out=%d "
                     "stop=%s cache_read=%d cache_write=%d%s", stage, item_id, round_no,
                     attempt, seconds, reply.input_tokens, reply.output_tokens,
                     reply.stop_reason, reply.cache_read_tokens, reply.cache_write_tokens,
                     f" retried={retried}" if retried else "")
            if s.log_prompts:
                log.info("llm reply stage=%s item=%s round=%d\n%s", stage, item_id, round_no,
                         reply.text)
            return reply, attempt
        raise AssertionError("unreachable")  # the loop returns or raises
