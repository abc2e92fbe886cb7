"""One typed settings object. The CLI fills it from flags and ``BARGE_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from barge.upstreams.config import UpstreamSpec, single_upstream

DEFAULT_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./barge-data")
    host: str = "127.0.0.1"
    port: int = 8080
    # Upstream: a base URL ending in /v1, and what governs calls to it. With a config
    # file (``upstreams``), ``upstream`` and ``upstream_api_key`` are its first
    # upstream's, and ``upstream_concurrency`` the sum of their concurrencies.
    upstream: str = "http://127.0.0.1:8000/v1"
    upstream_api_key: str | None = None
    upstream_concurrency: int = 128
    upstream_timeout: float = 600.0  # seconds for one attempt
    max_attempts: int = 5  # per request, the first included
    backoff_base: float = 0.5  # seconds; the cap grows as base * 2**attempt
    backoff_max: float = 60.0
    upstream_probe_interval: float = 15.0  # seconds between GET {upstream}/models; 0: never
    # The upstreams of a config file (--config); empty: the one ``upstream`` above.
    upstreams: tuple[UpstreamSpec, ...] = ()
    max_response_bytes: int = 64 * 1024 * 1024  # one upstream answer, after decompression
    # Processes that make the upstream requests for the engine (upstreams/senders.py);
    # 0: the engine's own process makes them.
    dispatch_processes: int = 0
    # What a batch may be.
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    completion_windows: tuple[str, ...] = ("24h",)
    max_requests: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024
    file_expiry_seconds: int = 30 * 86400  # uploaded batch files, by default
    # Keys.
    admin_key: str | None = field(default=None, repr=False)
    metrics_key: str | None = field(default=None, repr=False)  # None: /metrics needs none
    # Download links: the HMAC secret (None: data_dir/signing.key) and their lifetime.
    signing_secret: str | None = field(default=None, repr=False)
    download_url_ttl: int = 3600  # seconds a download link stays valid
    public_url: str | None = None  # base of links handed out, e.g. behind a proxy
    # The HTTP server's limits (uploads have max_file_bytes).
    max_json_bytes: int = 1024 * 1024  # one JSON request body
    max_header_bytes: int = 16 * 1024  # a request's line and headers
    max_connections: int = 2048  # open at once; over it, idle ones go, then new ones
    header_timeout: float = 20.0  # seconds a connection gets to send a request's headers
    keep_alive_timeout: int = 10  # seconds an idle keep-alive connection stays open
    # The engine.
    engine: bool = True
    slice_lines: int = 1000  # input lines per durable work slice
    flush_interval: float = 0.05  # seconds between durable result commits
    shared_flush_interval: float = 0.25  # the same with a shared database (per slice)
    shutdown_grace: float = 30.0  # seconds in-flight requests get on SIGTERM
    poll_interval: float = 0.5  # seconds between looks for new work
    # Batches validating or sending at once, all accounts (an account with none running
    # may still start one, so a new account never waits for the others').
    max_active_batches: int = 64
    max_active_batches_per_account: int = 16  # of those, at most this many of one account
    # Many machines: state in a shared PostgreSQL database, bytes in an S3 bucket (both or
    # neither); the data directory then holds only this node's scratch (tmp, cache, work).
    database_url: str | None = field(default=None, repr=False)  # postgresql://…
    database_schema: str | None = None  # a PostgreSQL schema for Barge's tables
    blob_url: str | None = None  # s3://bucket/prefix; endpoint and keys from AWS_*
    # S3 multipart parts in flight per transfer; each holds ~2 x its 5 MiB in memory.
    blob_part_concurrency: int = 1
    lease_seconds: float = 30.0  # how long a node's claim on work lasts unrenewed
    node_name: str | None = None  # None: hostname-pid-<4 random hex>, made by the App
    # Webhooks (``engine/webhooks.py``): where endpoints may be, and how events are sent.
    webhook_allow_private: bool = False  # also private, loopback, link-local addresses
    webhook_timeout: float = 10.0  # seconds one delivery attempt may take
    webhook_concurrency: int = 16  # attempts in flight at once, on each node
    webhook_retry_hours: float = 72.0  # how long a failing delivery is tried again
    webhook_backoff_base: float = 1.0  # seconds before the first retry, doubling after
    webhook_backoff_max: float = 3600.0  # the longest wait between two attempts
    webhook_poll_interval: float = 0.5  # seconds between looks for due deliveries

    @property
    def upstream_specs(self) -> tuple[UpstreamSpec, ...]:
        """Every upstream: the config file's, or the one ``--upstream`` names (serving
        every model)."""
        return self.upstreams or (
            single_upstream(self.upstream, self.upstream_api_key, self.upstream_concurrency),
        )

    @property
    def shared(self) -> bool:
        """Whether state lives in a database many nodes share."""
        return self.database_url is not None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "barge.db"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"
