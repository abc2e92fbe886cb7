"""One typed settings object. The CLI fills it from flags and ``BARGE_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    # Upstream: a base URL ending in /v1, and what governs calls to it.
    upstream: str = "http://127.0.0.1:8000/v1"
    upstream_api_key: str | None = None
    upstream_concurrency: int = 128
    upstream_timeout: float = 600.0  # seconds for one attempt
    max_attempts: int = 5  # per request, the first included
    backoff_base: float = 0.5  # seconds; the cap grows as base * 2**attempt
    backoff_max: float = 60.0
    # What a batch may be.
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    completion_windows: tuple[str, ...] = ("24h",)
    max_requests: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024
    file_expiry_seconds: int = 30 * 86400  # uploaded batch files, by default
    # Keys.
    admin_key: str | None = field(default=None, repr=False)
    # Download links: the HMAC secret (None: data_dir/signing.key) and their lifetime.
    signing_secret: str | None = field(default=None, repr=False)
    download_url_ttl: int = 3600  # seconds a download link stays valid
    public_url: str | None = None  # base of links handed out, e.g. behind a proxy
    # The engine.
    engine: bool = True
    slice_lines: int = 1000  # input lines per durable work slice
    flush_interval: float = 0.05  # seconds between durable result commits
    shutdown_grace: float = 30.0  # seconds in-flight requests get on SIGTERM
    poll_interval: float = 0.5  # seconds between looks for new work

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
