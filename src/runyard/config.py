"""Settings for every Runyard process.

Each section is its own pydantic-settings class with the env prefix ``RUNYARD_<SECTION>_``,
so ``RUNYARD_DATABASE_URL`` sets ``settings.database.url`` and ``RUNYARD_LOGGER_FORMAT`` sets
``settings.logger.format``. Nothing needs configuring on one machine: the data directory
(``RUNYARD_DATA_DIR``, default ``./runyard-data``) holds the SQLite database and local files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _section(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=False)


class DatabaseSettings(BaseSettings):
    model_config = _section("RUNYARD_DATABASE_")

    #: ``sqlite:///path/file.db`` or ``postgresql://user@host:port/db``; empty means
    #: ``<data_dir>/runyard.db``. The async driver is chosen by the server.
    url: str = ""
    #: Apply pending migrations when the server starts (under a lock on PostgreSQL).
    auto_migrate: bool = True
    #: SQLite ``synchronous`` pragma. FULL fsyncs the WAL on every commit so an accepted task
    #: survives a power cut; NORMAL is faster and still survives a process crash.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: How long a SQLite writer waits for the lock before failing, in milliseconds.
    sqlite_busy_timeout_ms: int = 5000
    #: ``inline``: SQLite's calls run on the event loop (no thread hop per statement; a lock
    #: held by another process is waited for with async retries). ``aiosqlite``: on
    #: aiosqlite's thread (the earlier driver, slower; a fallback).
    sqlite_driver: Literal["inline", "aiosqlite"] = "inline"
    pool_size: int = 10
    echo: bool = False


class LoggerSettings(BaseSettings):
    model_config = _section("RUNYARD_LOGGER_")

    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    #: ``auto`` picks text on a terminal and JSON otherwise.
    format: Literal["auto", "text", "json"] = "auto"


class ServerSettings(BaseSettings):
    model_config = _section("RUNYARD_SERVER_")

    host: str = "127.0.0.1"
    port: int = 8080
    #: Address users and agents reach this server at (used in links it hands out).
    #: Empty means ``http://<host>:<port>``.
    public_url: str = ""
    #: Signs session tokens and links, and keys the encryption of webhook secrets. Empty:
    #: read from ``secret_key_file``. Never kept in the database (docs/operations.md#secrets).
    secret_key: SecretStr = SecretStr("")
    #: A file holding the secret (mode 0600). Empty means ``<data_dir>/secret.key``, created
    #: on the first start of a new database. Every replica of one database needs the same one.
    secret_key_file: str = ""
    #: Largest request body the API accepts (file contents never pass through the API).
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: Log ``event_loop_stalled`` when the event loop is blocked this long (0 = don't watch).
    loop_stall_threshold_seconds: float = Field(default=0.5, ge=0)


class AuthSettings(BaseSettings):
    model_config = _section("RUNYARD_AUTH_")

    #: Self-service sign-up (``POST /auth/register``). Invited users can always register.
    registration: bool = True
    #: Registration also creates a personal team owned by the new user.
    auto_team: bool = True
    access_token_ttl_seconds: int = Field(default=3600, ge=60)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=300)
    invitation_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=300)
    pairing_ttl_seconds: int = Field(default=300, ge=30)
    #: Throttling of sign-ins (and password changes), device-pairing polls and invitation
    #: accepts, counted in the database so every replica sees the same counts. Each limit is
    #: a number of attempts in a sliding window of ``throttle_window_seconds``; over it, the
    #: key is refused with 429 and Retry-After for one window, twice that the next time, …
    #: up to ``throttle_max_backoff_seconds``.
    throttle_enabled: bool = True
    throttle_window_seconds: int = Field(default=300, ge=1)
    throttle_max_backoff_seconds: int = Field(default=3600, ge=1)
    #: Failed sign-ins for one account from one client address.
    signin_failures_per_account_address: int = Field(default=10, ge=1)
    #: Failed sign-ins for one account from all addresses (looser; not applied to an address
    #: that signed in to the account within ``signin_known_address_days``).
    signin_failures_per_account: int = Field(default=50, ge=1)
    #: Failed sign-ins from one client address, all accounts together.
    signin_failures_per_address: int = Field(default=100, ge=1)
    signin_known_address_days: float = Field(default=30, ge=0)
    #: Device-pairing polls from one client address (a device polls every 2 s).
    pairing_polls_per_address: int = Field(default=600, ge=1)
    #: Failed invitation accepts (unknown or expired token, another address's invitation).
    invitation_failures_per_user: int = Field(default=10, ge=1)
    invitation_failures_per_address: int = Field(default=30, ge=1)
    #: argon2id cost. The defaults follow argon2-cffi; tests lower them to stay fast.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)


class SchedulerSettings(BaseSettings):
    model_config = _section("RUNYARD_SCHEDULER_")

    #: How often agents send a heartbeat (told to them in ``welcome``).
    heartbeat_interval_seconds: float = Field(default=5.0, gt=0)
    #: A running attempt whose agent is not heard from for this long is lost (and retried).
    #: An agent that reconnects within it keeps its attempts.
    lease_ttl_seconds: float = Field(default=30.0, gt=0)
    #: A dispatched attempt not acknowledged within this goes back to waiting.
    ack_timeout_seconds: float = Field(default=30.0, gt=0)
    #: How often expired leases, ACK deadlines and task timeouts are looked for.
    reaper_interval_seconds: float = Field(default=1.0, gt=0)
    #: Safety-net dispatch pass and reload of waiting tasks, in case a wake-up was missed.
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    #: Retry backoff: first delay and cap, in seconds (doubling, ±20 % jitter).
    retry_backoff_base_seconds: float = Field(default=2.0, ge=0)
    retry_backoff_cap_seconds: float = Field(default=300.0, ge=0)
    #: Progress events are written at most this often per task (the latest tick wins).
    progress_interval_seconds: float = Field(default=0.5, ge=0)


class EventSettings(BaseSettings):
    model_config = _section("RUNYARD_EVENTS_")

    #: Seconds between keep-alive comments on an idle event stream.
    keep_alive_seconds: float = Field(default=15.0, gt=0)


class WebhookSettings(BaseSettings):
    model_config = _section("RUNYARD_WEBHOOKS_")

    #: Allow loopback destinations (and plain ``http://`` to them): development and tests.
    #: Nothing else that is not public is ever allowed (``security/egress.py``).
    allow_http_loopback: bool = False
    #: Seconds a receiver has to answer one delivery attempt.
    timeout_seconds: float = Field(default=10.0, gt=0)
    #: Deliveries in flight at once, so one slow receiver never holds up the others.
    concurrency: int = Field(default=32, ge=1)


class StorageSettings(BaseSettings):
    """Object storage for input uploads and task outputs (``RUNYARD_STORAGE_*``)."""

    model_config = _section("RUNYARD_STORAGE_")

    #: ``local``: files under ``<data_dir>/objects``, links served by this server;
    #: ``s3``: any S3-compatible service, links presigned by boto3.
    backend: Literal["local", "s3"] = "local"
    #: local: where objects live; empty means ``<data_dir>/objects``.
    local_path: str = ""
    s3_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    #: ``path`` for MinIO and most self-hosted services; ``auto`` lets boto3 choose.
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    #: Largest file one presigned PUT takes (``POST /r/files/presign``); larger: multipart.
    max_upload_mb: int = Field(default=500, ge=1)
    #: Largest file a multipart upload takes.
    max_multipart_gb: int = Field(default=100, ge=1)
    #: Size of each part of a multipart upload but the last (S3 needs at least 5 MB).
    multipart_part_mb: int = Field(default=100, ge=5, le=5 * 1024)
    #: Lifetime of every signed link handed out (uploads, downloads, dispatch inputs).
    link_ttl_seconds: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    #: Uploaded inputs are deleted this long after their upload was requested (0 = keep);
    #: an input still named by an unfinished task is kept until the task ends.
    input_retention_days: float = Field(default=1.0, ge=0)
    #: Outputs are deleted this long after their task completed (0 = keep).
    output_retention_days: float = Field(default=7.0, ge=0)
    #: How often the retention sweeper runs.
    sweep_interval_seconds: float = Field(default=300.0, gt=0)
    #: local: sendfile(2) for downloads, splice(2) for large uploads (uvicorn httptools,
    #: plain TCP).
    local_zero_copy: bool = True

    def local_root(self, data_dir: Path) -> Path:
        return Path(self.local_path) if self.local_path else data_dir / "objects"


class EmailSettings(BaseSettings):
    model_config = _section("RUNYARD_EMAIL_")

    #: Runyard sends no email yet; with this off, invitation tokens are returned to the admin.
    enabled: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNYARD_", extra="ignore")

    data_dir: Path = Path("runyard-data")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    logger: LoggerSettings = Field(default_factory=LoggerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    email: EmailSettings = Field(default_factory=EmailSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)

    def database_url(self) -> str:
        """The configured database URL, defaulting to SQLite in the data directory."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.data_dir / 'runyard.db').resolve()}"

    def public_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        host = self.server.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.server.port}"


def load_settings(data_dir: Path | None = None) -> Settings:
    """Read settings from the environment; a ``--data-dir`` flag wins over ``RUNYARD_DATA_DIR``."""
    settings = Settings()
    if data_dir is not None:
        settings.data_dir = data_dir
    return settings
