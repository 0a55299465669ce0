"""Carebook configuration: one settings class, read from `CAREBOOK_*` environment variables."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_JWT_SECRET = "carebook-development-secret-do-not-use-in-production"  # noqa: S105

Environment = Literal["development", "test", "production"]


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("carebook", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAREBOOK_", extra="ignore")

    environment: Environment = "development"

    # Storage. With no URLs set, `carebook serve` starts embedded servers under `data_dir`.
    database_url: str | None = None
    database_replica_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)

    # Database pool and per-connection limits (audit F13).
    # No overflow by default: SQLAlchemy's queue pool closes an overflow connection when it is
    # returned to a full queue, and under steady contention (waiters woken but not yet run)
    # that happens to most returns. Each reconnect then costs a connect, a new backend and new
    # plans: at 64 clients on 10 + 5, a cold availability request cost 2.7-6.7 ms of
    # PostgreSQL CPU; on 15 + 0, 1.1-1.6 ms (ADR 0012).
    db_pool_size: int = Field(default=15, ge=1, le=200)
    db_max_overflow: int = Field(default=0, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    db_pool_recycle_seconds: int = Field(default=1800, ge=-1)
    # Off: a dead pooled connection is replaced when its first statement fails (app.kit.db),
    # instead of a ping round trip on every checkout.
    db_pool_pre_ping: bool = False
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    db_statement_timeout_ms: int = Field(default=5000, ge=0)
    db_lock_timeout_ms: int = Field(default=2000, ge=0)
    db_application_name: str = "carebook"
    # PostgreSQL `plan_cache_mode` of every connection. Generic: a prepared statement is planned
    # once per connection, not on every execution; the slot statements' CTEs cost more to plan
    # than to run (availability 3.4 -> 1.7 ms of PostgreSQL CPU, the booking's slot check
    # 1.1 -> 0.3 ms, search 8.5 -> 4.8 ms; the listing's plan is the same either way).
    db_plan_cache_mode: Literal["auto", "force_generic_plan", "force_custom_plan"] = (
        "force_generic_plan"
    )
    # Statements slower than this are logged with their duration and SQL text (0 disables).
    slow_statement_ms: int = Field(default=200, ge=0)

    # Redis client and response cache.
    cache_enabled: bool = True  # off: every read computes from PostgreSQL (benchmarks)
    redis_socket_timeout_seconds: float = Field(default=0.25, gt=0)
    redis_max_connections: int = Field(default=50, ge=1)
    # How long a caller waits for a free pooled connection when all are busy (back-pressure,
    # never counted as an outage); separate from the socket timeout, which detects one.
    redis_pool_wait_seconds: float = Field(default=1.0, gt=0)

    # Auth (audit F17). The algorithm is pinned in app.kit.security, not configurable.
    jwt_secret: SecretStr = SecretStr(DEVELOPMENT_JWT_SECRET)
    access_token_minutes: int = Field(default=15, ge=1, le=60)
    refresh_token_days: int = Field(default=30, ge=1, le=365)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_memory_kib: int = Field(default=19456, ge=19456)
    argon2_parallelism: int = Field(default=1, ge=1)
    # How long a process trusts what it read about a user (active, role, clinic) before reading
    # again: the longest a change made by another process waits to take effect (0: no cache).
    principal_cache_seconds: float = Field(default=5.0, ge=0, le=60)

    # HTTP limits.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Proxies whose X-Forwarded-For/-Proto is believed (uvicorn's --forwarded-allow-ips): none
    # by default, so no client can pick the address its per-IP limits are counted under.
    forwarded_allow_ips: str = ""

    # Rate limits (audit F15). Per IP leaves room for a clinic behind one NAT address.
    rate_limit_enabled: bool = True
    rate_limit_ip_per_second: float = Field(default=200.0, gt=0)
    rate_limit_ip_burst: int = Field(default=400, ge=1)
    rate_limit_user_per_second: float = Field(default=30.0, gt=0)
    rate_limit_user_burst: int = Field(default=60, ge=1)
    rate_limit_login_per_minute: int = Field(default=10, ge=1)
    rate_limit_login_ip_per_minute: int = Field(default=60, ge=1)
    rate_limit_register_per_minute: int = Field(default=20, ge=1)
    rate_limit_booking_per_minute: int = Field(default=20, ge=1)

    # Hardening (ADR 0007). Host names the API answers to (`*.example.org` matches subdomains,
    # `*` any); others get 400 host_not_allowed, so no URL the API builds names a foreign host.
    allowed_hosts: list[str] = Field(default=["localhost", "127.0.0.1", "[::1]"], min_length=1)
    # Logins per email from clients that are not a known device, all addresses together: the
    # ceiling against guessing from many addresses (per email and address is the per-minute one).
    rate_limit_login_email_per_hour: int = Field(default=100, ge=1)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        normalized = []
        for host in hosts:
            name = host.strip().lower()
            if ":" in name and not name.startswith("["):
                try:  # a bare IPv6 address: bracketed, as it appears in a Host header
                    name = f"[{ipaddress.IPv6Address(name)}]"
                except ValueError:
                    name = ""
            if not name or "/" in name or ":" in name.rpartition("]")[2]:
                raise ValueError(
                    f"allowed host {host!r} must be a host name, without scheme or port"
                )
            normalized.append(name)
        return normalized

    # Booking rules.
    min_notice_minutes: int = Field(default=60, ge=0)
    booking_horizon_days: int = Field(default=90, ge=1, le=730)

    # Worker.
    run_worker_in_process: bool = False
    worker_health_check_interval_seconds: int = Field(default=30, ge=1)
    # Jobs that call a third party retry on their own schedule once the HTTP client's quick
    # retries are spent: exponential from the base, capped, this many runs in all.
    job_max_tries: int = Field(default=8, ge=1, le=50)
    job_retry_base_seconds: float = Field(default=10.0, gt=0, le=3600)
    job_retry_max_seconds: float = Field(default=600.0, gt=0, le=86400)
    # Reminder pushes, in minutes before the visit (JSON list in the environment).
    reminder_lead_minutes: list[int] = Field(default=[1440, 60], max_length=5)
    # Recovery of owed work from PostgreSQL alone (workers/recovery.py): every this many seconds
    # the worker re-plans what is still owed (pushes, rooms, events lost with Redis) once it is
    # older than the grace; a running job holds a lease on itself, so a killed worker's jobs run
    # again this soon (ARQ alone waits for the longest job timeout).
    recovery_interval_seconds: int = Field(default=5, ge=1, le=30)
    recovery_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    job_lease_seconds: float = Field(default=15.0, ge=3, le=600)

    # Third-party services (VideoSDK, FCM): disabled while their base URL is unset.
    videosdk_base_url: str | None = None  # e.g. https://api.videosdk.live
    videosdk_token: SecretStr | None = None  # management token, sent as `Authorization`
    videosdk_join_url_template: str = Field(
        default="https://app.videosdk.live/meeting/{room_id}", pattern=r"\{room_id\}"
    )
    fcm_base_url: str | None = None  # e.g. https://fcm.googleapis.com
    fcm_project_id: str | None = None
    fcm_access_token: SecretStr | None = None  # OAuth2 bearer token for FCM HTTP v1
    # Every outgoing call (audit F8, F13): timeouts, retries, circuit breaker, bulkhead.
    http_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    http_read_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    http_write_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    http_pool_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    http_retry_attempts: int = Field(default=4, ge=1, le=10)  # attempts in all, first included
    http_retry_base_seconds: float = Field(default=0.2, gt=0, le=10)
    http_retry_max_seconds: float = Field(default=5.0, gt=0, le=60)  # caps backoff, Retry-After
    breaker_fail_max: int = Field(default=5, ge=1, le=100)
    breaker_reset_seconds: float = Field(default=30.0, gt=0, le=3600)
    bulkhead_limit: int = Field(default=10, ge=1, le=1000)  # concurrent calls per service
    bulkhead_wait_seconds: float = Field(default=1.0, ge=0, le=60)

    # Medical records (audit F1): files live in object storage; the API hands out signed URLs.
    storage_backend: Literal["local", "s3"] = "local"
    storage_local_dir: Path | None = None  # default: <data_dir>/records
    storage_signing_key: SecretStr | None = None  # HMAC key of local URLs (default: derived)
    public_base_url: str | None = None  # absolute base of local file URLs (default: the request's)
    s3_endpoint_url: str | None = None  # e.g. https://s3.eu-west-1.amazonaws.com or MinIO
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    presigned_url_ttl_seconds: int = Field(default=900, ge=60, le=604_800)
    record_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1, le=5 * 1024**3)
    record_content_types: list[str] = Field(
        default=["application/pdf", "image/jpeg", "image/png", "text/plain", "application/dicom"]
    )

    # Analytics (audit F11): bounded by its own statement timeout on the read session.
    analytics_statement_timeout_ms: int = Field(default=3000, ge=100, le=60_000)

    # Logging.
    log_level: str = "INFO"
    log_json: bool = True

    # Tracing (OpenTelemetry): spans are exported only when an exporter is chosen.
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = "http://127.0.0.1:4318/v1/traces"  # OTLP over HTTP (protobuf)
    otel_service_name: str = "carebook"
    otel_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # `carebook worker` serves its own /metrics on this port when set (the API's is /metrics).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    @field_validator("reminder_lead_minutes")
    @classmethod
    def _distinct_positive_leads(cls, leads: list[int]) -> list[int]:
        if any(lead <= 0 or lead > 7 * 24 * 60 for lead in leads):
            raise ValueError("reminder leads are between 1 minute and 7 days")
        return sorted(set(leads), reverse=True)

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment == "development":
            return self
        secret = self.jwt_secret.get_secret_value()
        if secret == DEVELOPMENT_JWT_SECRET:
            raise ValueError(
                "CAREBOOK_JWT_SECRET must be set outside development "
                "(the built-in development secret is public)"
            )
        if len(secret) < 32:
            raise ValueError("CAREBOOK_JWT_SECRET must be at least 32 characters")
        return self

    @property
    def embedded(self) -> bool:
        """True when no external database is configured and embedded servers are used."""
        return self.database_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
