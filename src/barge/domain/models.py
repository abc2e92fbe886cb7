"""Records of the domain: files, batches, the slices a batch's work is cut into, keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from barge.domain.status import Status
from barge.domain.usage import NO_USAGE, Usage

# Purposes a client may upload with; Barge itself writes ``batch_output``.
UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
OUTPUT_PURPOSE = "batch_output"


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    account: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int
    expires_at: int | None
    lines: int = 0


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem found in an input file; ``line`` is 1-based (None: the whole file)."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class Slice:
    """A run of consecutive input lines whose results share one durable part file."""

    batch_id: str
    no: int
    start_line: int  # 0-based index of its first line in the input file
    n_lines: int
    start_offset: int  # byte offset of its first line in the input file
    end_offset: int
    committed_bytes: int = 0  # durable length of its part file
    completed: int = 0
    failed: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    account: str
    endpoint: str
    completion_window: str
    input_file_id: str
    status: Status
    created_at: int
    updated_at: float
    expires_at: int
    metadata: dict[str, str] | None = None
    model: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[LineError] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_expiry_seconds: int | None = None  # output_expires_after.seconds, if given
    hash: str | None = None  # SHA-256 the client gave at create, checked before any request
    usage: Usage = NO_USAGE  # tokens of the results recorded so far
    # Creation time in Unix milliseconds (created_at is its whole seconds); None for a
    # batch stored before it was kept.
    created_ms: int | None = None
    # Metadata values are JSON texts (the compact dialect's batch_dict), not plain strings
    # (OpenAI metadata); None for a batch stored before this was kept.
    metadata_json: bool | None = False
    # Commits of results counted so far (``Store.record_progress``), which number the
    # groups of its results log; None for a batch stored before the log was kept.
    result_commits: int | None = 0

    def replace(self, **changes: Any) -> BatchRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    account: str
    role: str
    created_at: int
    revoked_at: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the account every object they touch must belong to."""

    account: str
    key_id: str
    role: str
