"""Settings: a ladder YAML file plus environment overrides, validated up front.

Precedence (highest first): keyword arguments, environment variables
(``ADAPTIVE_SD_`` prefix, ``__`` between nested keys, e.g.
``ADAPTIVE_SD_CASCADE__DEFAULT_LAMBDA=20``), the YAML file named by
``ADAPTIVE_SD_CONFIG`` (default ``configs/cpu.yaml``; read by pydantic-settings'
``YamlConfigSettingsSource``), then the defaults below.
Errors name the offending key so a bad file fails at start-up, not mid-request.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from common import defaults

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu.yaml"  # configs/ is package data beside common/
CONFIG_ENV = "ADAPTIVE_SD_CONFIG"
DEFAULT_COST_UNIT = "cost"  # the unit of a ladder priced per request in no unit of its own: prices: {cost: {request: 2.0}}
TIME_UNIT = "seconds"  # the cost unit that is wall-clock time: the one whose prices the router can measure itself


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LlamaCppLaunch(_Model):
    """Start this stage with our llama.cpp stage server (CPU)."""

    backend: Literal["llamacpp"] = "llamacpp"
    weights: str = Field(description="catalog key in servers/weights.py")
    threads: int = Field(1, ge=1, description="CPU threads for this stage's process")
    n_ctx: int = Field(4096, ge=256)


class VLLMLaunch(_Model):
    """Start this stage as a vLLM OpenAI server on a subset of GPUs."""

    backend: Literal["vllm"] = "vllm"
    model: str = Field(description="Hugging Face model id or local folder")
    gpus: list[int] = Field(min_length=1, description="CUDA device ids (CUDA_VISIBLE_DEVICES)")
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=256)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    speculative_model: str | None = Field(None, description="draft model for vLLM's own speculative decoding")
    num_speculative_tokens: int = Field(5, ge=1)
    tool_call_parser: str | None = Field(
        None, description="vLLM's tool-call parser for this model (hermes for Qwen2.5, llama3_json for Llama 3.x): enables tools"
    )
    extra_args: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tp_fits(self) -> VLLMLaunch:
        if self.tensor_parallel_size > len(self.gpus):
            raise ValueError(f"tensor_parallel_size={self.tensor_parallel_size} needs at least that many gpus, got {self.gpus}")
        return self


def _http_url(v: str) -> str:
    """A base URL: http(s) with a host, trailing slash dropped ("" allowed where the dialect needs none)."""
    if v == "":
        return v
    parsed = urlparse(v)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"not an http(s) URL: {v!r}")
    return v.rstrip("/")


StageUrl = Annotated[str, AfterValidator(_http_url)]
"""A stage's or endpoint's base URL: http(s) with a host, trailing slash dropped; "" where the dialect needs none."""


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MASK = "**********"  # how a key given inline is printed (as pydantic prints a SecretStr)


def _key_source(api_key: str) -> tuple[Literal["env", "file"], str] | None:
    """Where ``api_key`` says the key is: ``("env", NAME)`` for ``env:NAME``, ``("file", PATH)`` for ``file:PATH``;
    ``None`` for a key given inline."""
    kind, colon, ref = api_key.partition(":")
    if colon and kind == "env":
        return "env", ref.strip()
    if colon and kind == "file":
        return "file", ref.strip()
    return None


def _check_api_key(v: str | None) -> str | None:
    """An ``api_key`` value: the key inline, ``env:NAME`` or ``file:PATH`` (checked here, read at start-up)."""
    source = _key_source(v) if v else None
    if source is None:
        return v
    kind, ref = source
    if kind == "env" and not _ENV_NAME.match(ref):
        raise ValueError(f"env: must name an environment variable (letters, digits, _), got {ref!r}")
    if kind == "file" and not ref:
        raise ValueError("file: must name a file")
    return f"{kind}:{ref}"


def _print_api_key(v: str | None) -> str | None:
    """What check-config prints: where the key is read from, never a key given inline."""
    return v if not v or _key_source(v) else _MASK


ApiKey = Annotated[str | None, AfterValidator(_check_api_key), PlainSerializer(_print_api_key)]
"""A bearer token: ``env:NAME``, ``file:PATH`` or the key inline; check-config prints the first two, masks the third."""


def read_key(api_key: str | None, where: str) -> str | None:
    """The key itself, read when the router starts: ``api_key`` inline, or from the environment variable
    (``env:NAME``) or the file (``file:PATH``, a mounted secret; surrounding white space dropped) it names.
    ``ConfigError`` naming ``where`` when the variable or file is missing or empty: a stage without its key would fail
    every request with a 401 instead."""
    source = _key_source(api_key) if api_key else None
    if source is None:
        return api_key or None
    kind, ref = source
    if kind == "env":
        value = os.environ.get(ref, "").strip()
        if not value:
            raise ConfigError(f"{where}.api_key: environment variable {ref} is not set")
        return value
    try:
        value = Path(ref).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}.api_key: cannot read {ref}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{where}.api_key: {ref} is empty")
    return value


def _refuse_removed_keys(data: Any, *, stage: bool) -> Any:
    """A stage or endpoint written for the fields that were merged away fails naming their replacement, spelled out."""
    if not isinstance(data, dict):
        return data
    fixes = [f"`{old}: {data[old]}` is now `api_key: {form}:{data[old]}`"
             for old, form in (("api_key_env", "env"), ("api_key_file", "file")) if old in data]  # fmt: skip
    if stage and "cost" in data:
        price = f"{DEFAULT_COST_UNIT}: {{request: {data['cost']}}}"
        unit = f"(per request, in {DEFAULT_COST_UNIT}, the default cascade.cost_unit)"
        if data.get("prices"):  # then cost counted only while cascade.cost_unit was unset
            fix = f"add `{price}` to this stage's prices {unit}; if cascade.cost_unit is set, `cost` was unused: delete it"
        else:
            fix = f"write `prices: {{{price}}}` {unit}"
        fixes.append(f"`cost: {data['cost']}` is now a price: {fix}")
    if fixes:
        raise ValueError("; ".join(fixes))
    return data


class EndpointConfig(_Model):
    """One replica of a stage: the same model served at another URL (another vLLM replica, host, region or key)."""

    url: StageUrl = Field("", description="base URL ending in /v1; dialect litellm: the provider's api_base, may be empty")
    api_key: ApiKey = Field(
        None, description="bearer token of this endpoint: env:NAME (an environment variable), file:PATH (a secret) or the key inline"
    )
    max_concurrency: int | None = Field(None, ge=1, description="requests this endpoint runs at once at full speed; default: the stage's")

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        return _refuse_removed_keys(data, stage=False)


class TokenPrices(_Model):
    """What one answer of a stage costs in one cost unit: a fixed part per request plus a price per prompt token and
    per generated token. The one definition of a request's cost, used by the stopping rule, the tenants' cost
    accounting and the offline replay alike."""

    request: float = Field(0.0, ge=0.0, description="per request, whatever its length (e.g. time to first token)")
    prompt_token: float = Field(0.0, ge=0.0, description="per prompt token the stage reads (prefill)")
    output_token: float = Field(0.0, ge=0.0, description="per token the stage generates (decode)")

    def cost(self, prompt_tokens: float, output_tokens: float) -> float:
        return self.request + self.prompt_token * prompt_tokens + self.output_token * output_tokens


class StageConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", description="public model name of this stage")
    model: str = Field(description="model id the upstream server expects")
    url: StageUrl = Field(
        "",
        description="base URL of the OpenAI-compatible server, ending in /v1; may be left out when endpoints are given "
        "(then the first endpoint's) or for dialect litellm",
    )
    endpoints: list[EndpointConfig] = Field(
        default_factory=list,
        description="replicas of this stage; url, when not among them, is the first; requests are spread over the healthy ones",
    )
    dialect: Literal["vllm", "openai", "litellm"] = Field(
        "vllm",
        description="vllm: supports prompt_logprobs/continue_final_message (our CPU server does too); openai: a plain "
        "OpenAI-compatible server; litellm: through LiteLLM (the litellm extra), model in LiteLLM's provider/model form",
    )
    logprobs: bool = Field(
        True,
        description="the stage returns token logprobs; false: the cascade never asks it for them and judges its answer "
        "from text features only",
    )
    prices: dict[str, TokenPrices] = Field(
        default_factory=dict,
        description="this stage's price per request, per prompt token and per generated token in each named cost unit "
        "(e.g. cost, compute, seconds, usd); cascade.cost_unit (default: cost) picks the one the stopping rule uses",
    )
    output_tokens: float | None = Field(
        None,
        gt=0.0,
        description="expected generated tokens of one answer, for per-token prices; unset: the predictor's learned mean "
        "for this stage, else the request's max_tokens",
    )
    scoped_scoring: bool | None = Field(
        None,
        description="scoring requests ask for the final message's positions only (our CPU server's prompt_logprobs_scope); "
        "default: true for stages launched as llamacpp",
    )
    tokenizer: str | None = Field(
        None, description="stages with the same value share a tokenizer: sampled drafts are then reused by speculative sampling"
    )
    prior: float = Field(0.5, gt=0.0, lt=1.0, description="prompt-only P(acceptable) used until a learned prior exists")
    tools: bool = Field(True, description="the stage can answer requests that offer tools; false: the cascade skips it for them")
    structured_outputs: bool = Field(True, description="the stage honours response_format json_object/json_schema; false: skipped for them")
    completions: bool = Field(
        True,
        description="the stage serves /v1/completions (raw-text prompts); false: the cascade skips it for them and a "
        "pass-through to it is a 400 (a plain chat-only provider)",
    )
    # A stage's answer can take minutes and still be healthy (a long stream), so timeouts bound the silences, not the
    # whole: what stalls is caught after timeout_s whatever the answer's length (httpx's and aiohttp's read timeouts).
    timeout_s: float = Field(
        300.0,
        gt=0.0,
        description="longest silence of the stage: the wait for a connection from the router's pool, then for the first "
        "byte of the answer, then between two bytes; an answer that keeps coming is never cut by it",
    )
    connect_timeout_s: float = Field(2.0, gt=0.0, description="longest wait to open a connection to the stage (TCP and TLS)")
    total_timeout_s: float | None = Field(
        None, gt=0.0, description="cap on a whole request, its answer read to the end included; unset: none (timeout_s still applies)"
    )
    api_key: ApiKey = Field(
        None,
        description="bearer token sent to the stage: env:NAME (an environment variable), file:PATH (a mounted secret) or "
        "the key inline (masked by check-config); endpoints without their own use it",
    )
    max_concurrency: int | None = Field(
        None, ge=1, description="requests one endpoint runs at once at full speed: the load-aware cost queues beyond it"
    )
    launch: Annotated[LlamaCppLaunch | VLLMLaunch, Field(discriminator="backend")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        return _refuse_removed_keys(data, stage=True)

    @model_validator(mode="after")
    def _endpoints(self) -> StageConfig:
        """``url`` is always set for a stage that has one (the first endpoint's when only endpoints are given), so
        everything that reads ``config.url`` (the launcher, a lone ``StageClient``) keeps working."""
        if not self.url and self.endpoints:
            self.url = self.endpoints[0].url
        urls = [e.url for e in self.endpoints]
        if len(set(urls)) != len(urls):
            raise ValueError(f"endpoints list a URL twice: {urls}")
        if self.dialect != "litellm" and (not self.url or not all(urls)):
            raise ValueError("url (or endpoints[i].url for every endpoint) is required unless dialect is litellm")
        if self.launch is not None and not self.url:
            raise ValueError("a stage with a launch block needs a url to listen on")
        return self

    def price(self, unit: str) -> TokenPrices:
        """The stage's prices in ``unit`` (``Settings`` checks every stage has prices in ``cascade.cost_unit``)."""
        return self.prices[unit]

    def replicas(self) -> list[EndpointConfig]:
        """Every endpoint of the stage, in order: ``url`` first unless ``endpoints`` lists it. An endpoint without a key
        of its own uses the stage's, and without ``max_concurrency`` the stage's."""
        given = list(self.endpoints)
        if not any(e.url == self.url for e in given):
            given.insert(0, EndpointConfig(url=self.url))
        out = []
        for e in given:
            update: dict[str, object] = {}
            if not e.api_key:
                update["api_key"] = self.api_key
            if e.max_concurrency is None:
                update["max_concurrency"] = self.max_concurrency
            out.append(e.model_copy(update=update) if update else e)
        return out

    @property
    def vllm_extras(self) -> bool:
        """The stage takes vLLM's sampling extras (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
        ``chat_template_kwargs``): dialect vllm (vLLM, our CPU server); a hosted API does not."""
        return self.dialect == "vllm"

    @property
    def scopes_scoring(self) -> bool:
        if self.scoped_scoring is not None:
            return self.scoped_scoring
        return self.launch is not None and self.launch.backend == "llamacpp"

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"


class RiskConfig(_Model):
    """Shrink p̂ toward a Beta(alpha, beta) prior: (n p + alpha) / (n + alpha + beta)."""

    alpha: float = Field(defaults.RISK_ALPHA, ge=0.0)
    beta: float = Field(defaults.RISK_BETA, ge=0.0)
    evidence: float = Field(defaults.EVIDENCE, gt=0.0, description="pseudo-count n of the predictor's evidence")


class MeasuredPricesConfig(_Model):
    """Measure each stage's prices in seconds from its own answers (``router.measured_prices``); configured prices
    are the starting values."""

    enabled: bool = Field(
        True,
        description="when cascade.cost_unit is seconds, the rule prices each stage at its seconds per request, per prompt "
        "token and per generated token fitted from its own completed visits under the load it has, starting from (and "
        "regularised toward) its prices.seconds; ignored for every other unit (their prices are not time)",
    )
    half_life_visits: float = Field(
        defaults.MEASURED_HALF_LIFE_VISITS, gt=0.0, description="a visit weighs half as much this many visits (of that stage) later"
    )
    prior_strength: float = Field(
        defaults.MEASURED_PRIOR_STRENGTH,
        gt=0.0,
        description="how many visits the configured prices.seconds weigh as: a few noisy visits move them little",
    )


class ShadowConfig(_Model):
    """Shadow checks (``router.shadow``): a sampled share of the answers the cascade returns from a lower stage is
    verified by the next stage after the response has gone out, so that labels also cover the answers it did not
    escalate."""

    rate: float = Field(
        defaults.SHADOW_RATE,
        ge=0.0,
        le=1.0,
        description="probability that an answer returned from a lower stage is checked by the next stage (0: off); the "
        "labels it gives carry 1/rate as their weight",
    )
    max_concurrent: int = Field(1, ge=1, description="shadow checks running at once in this replica; more are skipped")
    untrained_rate: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the rate while the predictor in service is not trained on this ladder (kind: baseline): a new "
        "ladder learns faster by checking more (None: rate)",
    )


class ExploreConfig(_Model):
    """Exploration (``router.cascade``, a "tour"): a sampled share of requests visits every stage it may use, in
    order, each verifying the answer below it as a draft, and returns the top stage's answer. The user gets the top
    stage's quality; every lower answer gets a verification label, on a sample of the traffic that no prior or
    decision chose (what a new ladder, or a new kind of prompt, needs before its lower stages can be judged)."""

    rate: float = Field(
        0.0, ge=0.0, le=1.0, description="probability that a request tours the ladder while a trained model serves (0: off)"
    )
    untrained_rate: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the rate while the ladder is still being learned: the predictor in service is not trained on it (kind: "
        "baseline), or cascade.default_target has no λ yet in its calibration table (None: rate)",
    )


class QualityTarget(_Model):
    """A target λ is looked up for in the predictor's calibration table (``python -m training calibrate``) instead
    of a λ in cost units: exactly one of the three. A tenant's (``TenantSettings.target``) or the router's default
    (``cascade.default_target``). The table says what accuracy means: a checker's verdict where the model was
    calibrated on a collection, agreement with the top stage where it was calibrated on a new ladder's tours."""

    keep: float | None = Field(None, gt=0.0, le=1.0, description="keep this share of the top stage's accuracy")
    within_points: float | None = Field(None, ge=0.0, le=100.0, description="stay within this many accuracy points of the top stage")
    top_share: float | None = Field(None, ge=0.0, le=1.0, description="send this share of requests to the top stage")
    confidence: float | None = Field(
        None,
        ge=0.5,
        lt=1.0,
        description="for keep or within_points: meet it with this confidence, a lower bound of the table's accuracy "
        "(its paired difference with the top stage) instead of the point estimate; unset: the point estimate",
    )

    @model_validator(mode="after")
    def _one(self) -> QualityTarget:
        if sum(v is not None for v in (self.keep, self.within_points, self.top_share)) != 1:
            raise ValueError("give exactly one of keep, within_points, top_share")
        if self.confidence is not None and self.top_share is not None:
            raise ValueError("confidence applies to keep or within_points, not to top_share")
        return self


class CascadeConfig(_Model):
    model_name: str = Field(defaults.MODEL_NAME, description="the `model` value that runs the adaptive ladder")
    default_lambda: float = Field(defaults.LAMBDA, ge=0.0, description="quality weight when a request names none")
    default_target: QualityTarget | None = Field(
        None,
        description="the λ of requests whose tenant sets none, looked up in the calibration table of the model in service "
        "for this target (as a tenant's target is); default_lambda while the model has no table or none of its λ meets it",
    )
    skip_by_prior: bool = Field(True, description="let the prompt-only priors skip small stages")
    explore: ExploreConfig = Field(default_factory=ExploreConfig, description="tours of the whole ladder, for labels")
    untrained_lambda_scale: float = Field(
        1.0,
        ge=1.0,
        description="λ is multiplied by this while the predictor in service is not trained on this ladder (kind: "
        "baseline): its p̂ is a guess, so the rule escalates more until a learned model is promoted",
    )
    prior_strength: float | None = Field(
        defaults.PRIOR_STRENGTH, gt=0.0, description="Beta concentration of a future stage's p̂ around its prior (None: point estimate)"
    )
    top_logprobs: int | None = Field(
        None,
        ge=1,
        le=20,
        description="top-k asked of each stage; unset: the k the predictor was trained with (a different k is refused at start-up)",
    )
    cost_unit: str = Field(
        DEFAULT_COST_UNIT,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
        description="which of the stages' prices the stopping rule uses and the tenants are charged in (a key of "
        "stages[i].prices, e.g. compute or seconds); λ is in this unit",
    )
    risk: RiskConfig = Field(default_factory=RiskConfig)
    draft_reuse: bool = Field(True, description="verify the lower stage's draft on escalation (false: always regenerate)")
    early_exit: bool = Field(
        True,
        description="judge a stage while it writes: at the predictor's checkpoints (generated tokens) its prefix model "
        "estimates the finished answer, and the rule aborts the stage to escalate when finishing is not worth its price "
        "(needs a predictor with a prefix model; plain-text chat answers of stages called from scratch)",
    )
    draft_min_accepted: float = Field(
        defaults.DRAFT_MIN_ACCEPTED,
        ge=0.0,
        description="regenerate instead of verifying once a stage pair's mean accepted draft tokens falls below this (0: always verify)",
    )
    load_aware: bool = Field(
        False,
        description="add each stage's expected queueing delay (from the router's in-flight counts, and vLLM's queue gauges "
        "where reachable) to its cost in the stopping rule: a saturated stage is escalated to less",
    )
    load_cost_per_s: float = Field(
        1.0, ge=0.0, description="cost units one second of expected queueing delay adds to a stage's cost (load_aware)"
    )
    measured_prices: MeasuredPricesConfig = Field(default_factory=MeasuredPricesConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)

    @property
    def prices_measured(self) -> bool:
        """The rule prices the stages at their measured seconds (``measured_prices``; the unit is ``seconds``)."""
        return self.measured_prices.enabled and self.cost_unit == TIME_UNIT


class BaselineCoefficients(_Model):
    """p = sigmoid(intercept + slope * mean token logprob), per stage."""

    intercept: float = 2.0
    slope: float = 4.0


class PredictorConfig(_Model):
    kind: Literal["baseline", "onnx"] = "baseline"
    path: str | None = Field(
        None,
        description="for kind=onnx: the directory written by `python -m training train`, or a model registry of "
        "`python -m training learn` (its `current` file names the version in service) "
        "(relative paths resolve against the working directory, then the installed packages' folder); for "
        "kind=baseline: a registry that `training learn --data none` will fill, served from its first version on "
        "(relative to the working directory)",
    )
    reload_s: float = Field(
        defaults.MODEL_RELOAD_S,
        ge=0.0,
        description="for a model registry: how often each replica looks for a newly promoted (or rolled back) version and "
        "loads it without a restart (0: never)",
    )
    baseline: list[BaselineCoefficients] = Field(default_factory=list, description="per stage; missing stages use defaults")
    log_path: str | None = Field(
        None, description="opt-in: append each cascade's stage answers (prompts included) here, in the collection format, to retrain on"
    )


class TenancyConfig(_Model):
    auth: Literal["open", "keys"] = Field(
        "keys",
        description="keys: every request needs a tenant's API key; open: unknown or missing keys use the default tenant (local demo)",
    )
    redis_url: str | None = Field(
        None,
        description="the Redis all replicas share: redis://host:port/db (or rediss://); redis+sentinel://h1:26379,h2:26379/service/db "
        "(Sentinel failover); redis+cluster://h1:6379,h2:6379 (Redis Cluster); unset = in-process store (one replica)",
    )
    admin_key: SecretStr | None = Field(None, description="bearer key of the admin API; unset = admin API disabled")
    cache_ttl_s: float = Field(2.0, gt=0.0, description="how long a replica trusts cached tenant settings")
    redis_timeout_s: float = Field(0.1, gt=0.0, description="socket timeout of each Redis call")
    breaker_failures: int = Field(3, ge=1, description="consecutive Redis failures that open the circuit breaker")
    breaker_cooldown_s: float = Field(1.0, gt=0.0, description="how long the breaker stays open before probing Redis again")
    sync_interval_s: float = Field(0.5, gt=0.0, description="how often usage is written and SLO controllers step")
    lease_s: float = Field(
        1.0,
        ge=0.0,
        description="a replica takes up to this many seconds' worth of a tenant's request budget per Redis round trip; 0 = one per request",
    )
    slo_initial_lambda: float = Field(defaults.LAMBDA, gt=0.0, description="starting λ of an SLO tenant that sets none")


class PoolConfig(_Model):
    """How the router treats the endpoints of every stage: outlier ejection, health probes, retries."""

    eject_after: int = Field(3, ge=1, description="consecutive failures (connect errors, 5xx, timeouts, bad bodies) that eject an endpoint")
    eject_base_s: float = Field(2.0, gt=0.0, description="first ejection's cool-down; each ejection in a row doubles it")
    eject_max_s: float = Field(60.0, gt=0.0, description="longest cool-down")
    probe_interval_s: float = Field(
        5.0, ge=0.0, description="active health probe of each endpoint (GET /health; openai dialect: GET /v1/models); 0: none"
    )
    probe_timeout_s: float = Field(2.0, gt=0.0, description="a probe slower than this fails")
    retry: bool = Field(
        True, description="a request that fails on one endpoint before any byte reached the client is retried once on another"
    )
    queue_gauges: bool = Field(
        True, description="with cascade.load_aware, read vLLM's /metrics queue gauges at each probe (vllm dialect; skipped where absent)"
    )

    @model_validator(mode="after")
    def _cooldowns(self) -> PoolConfig:
        if self.eject_max_s < self.eject_base_s:
            raise ValueError(f"eject_max_s ({self.eject_max_s:g}) is shorter than eject_base_s ({self.eject_base_s:g})")
        return self


class ServerConfig(_Model):
    host: str = defaults.HOST
    port: int = Field(defaults.PORT, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"
    startup_timeout_s: float = Field(600.0, gt=0.0, description="how long `up` waits for stages to be healthy")
    shutdown_grace_s: float = Field(
        30.0,
        ge=0.0,
        description="on SIGTERM, how long in-flight requests and streams may run before the router closes them "
        "(Kubernetes: keep terminationGracePeriodSeconds above preStop + this)",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ADAPTIVE_SD_", env_nested_delimiter="__", extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    tenancy: TenancyConfig = Field(default_factory=TenancyConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    stages: list[StageConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        if self.cascade.model_name in names:
            raise ValueError(f"cascade.model_name {self.cascade.model_name!r} collides with a stage name")
        unit = self.cascade.cost_unit
        missing = [s.name for s in self.stages if unit not in s.prices]
        if missing:
            units = sorted({u for s in self.stages for u in s.prices})
            example = f"prices: {{{DEFAULT_COST_UNIT}: {{request: 1.0}}}}"
            hint = (f"set cascade.cost_unit to one of {', '.join(units)}, or price every stage in {unit}" if units
                    else f"price every stage, e.g. per request in the default unit: {example}")  # fmt: skip
            raise ValueError(f"cascade.cost_unit is {unit!r} but stages {missing} have no prices.{unit}: {hint}")
        return self

    def stage_index(self, ref: int | str) -> int:
        if isinstance(ref, int):
            if ref >= len(self.stages):
                raise ValueError(f"stage {ref} does not exist (ladder has {len(self.stages)})")
            return ref
        for i, s in enumerate(self.stages):
            if s.name == ref:
                return i
        raise ValueError(f"unknown stage {ref!r}")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings deep-merges sources, so ADAPTIVE_SD_CASCADE__DEFAULT_LAMBDA
        # replaces one leaf of the file's `cascade` mapping, not the whole mapping.
        path = _config_file.get()
        file = (_LadderFile(settings_cls, yaml_file=path),) if path is not None else ()
        return (init_settings, env_settings, *file)


_config_file: ContextVar[Path | None] = ContextVar("adaptive_sd_config_file", default=None)  # set by load_settings


class _LadderFile(YamlConfigSettingsSource):
    """The ladder file, read by pydantic-settings' YAML source; what it cannot take is a ``ConfigError`` naming the file."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file_path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping at the top level")
        return data


class ConfigError(ValueError):
    """The configuration file or environment is invalid; the message says where."""


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-")))
        lines.append(f"  {loc or '<root>'}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None) -> Settings:
    """Load the YAML ladder named by ``path`` (or $ADAPTIVE_SD_CONFIG) with env overrides."""
    path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        path.open("rb").close()  # the YAML source skips a file that is not there; a ladder that is not there is an error
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    token = _config_file.set(path)
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_format(exc, str(path))) from None
    finally:
        _config_file.reset(token)
