"""What both stores share about rows: the columns their verbs read, the condition of the
unfinished-batches index, parameters kept in range, and rows decoded into records. A
row is anything indexable by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from barge.domain.models import BatchRecord, FileRecord, LineError, Slice
from barge.domain.status import TERMINAL, Status
from barge.domain.usage import MAX_TOKENS, Usage
from barge.domain.webhooks import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookClaim,
    WebhookDelivery,
    WebhookEndpoint,
)
from barge.store.protocol import Lease, ResultGroup, SliceProgress, StoredResult

_BATCH_COLUMNS = (
    "id, account, endpoint, completion_window, input_file_id, status, created_at, updated_at,"
    " expires_at, metadata, model, total, completed, failed, errors, output_file_id,"
    " error_file_id, in_progress_at, finalizing_at, completed_at, failed_at, expired_at,"
    " cancelling_at, cancelled_at, output_expiry_seconds, hash, input_tokens, output_tokens,"
    " cached_tokens, reasoning_tokens, created_ms, metadata_json, result_commits"
)
_FILE_COLUMNS = "id, account, filename, purpose, bytes, sha256, created_at, expires_at, lines"
_SLICE_COLUMNS = (
    "batch_id, no, start_line, n_lines, start_offset, end_offset, committed_bytes, completed,"
    " failed, done"
)
_LEASE_COLUMNS = f"{_SLICE_COLUMNS}, lease_token, lease_owner, lease_expires"
_RESULT_COLUMNS = "slice_no, idx, ok, line, commit_no"
_GROUP_COLUMNS = (
    "commit_no, slice_no, n_ok, n_err, ok_bytes, err_bytes, part_start, part_end, ok_offset,"
    " err_offset"
)

# Unfinished batches: the condition of the partial index ``batches_unfinished`` of both
# schemas, spelled as there so that the planner uses the index.
_UNFINISHED = (
    "status NOT IN ('hash_mismatch', 'validation_failed', 'cancelled', 'expired',"
    " 'completed', 'deleting')"
)
assert set(_UNFINISHED[15:-1].replace("'", "").split(", ")) == {*TERMINAL, Status.DELETING}

# A batch's creation time in milliseconds; batches from before ``created_ms`` existed
# have only whole seconds.
_CREATED_MS = "COALESCE(created_ms, created_at * 1000)"
_INT64 = (-(2**63), 2**63 - 1)


def _clamp(n: int) -> int:
    """A bound as a 64-bit parameter: an int beyond int64 means the same as its end of
    the range (no creation time comes near either)."""
    return min(max(n, _INT64[0]), _INT64[1])


def _tokens(n: int) -> int:
    """A token count as a parameter: within 0..MAX_TOKENS."""
    return min(max(n, 0), MAX_TOKENS)


def _batch(row: Any) -> BatchRecord:
    errors = [LineError(**e) for e in orjson.loads(row["errors"])] if row["errors"] else []
    metadata_json = row["metadata_json"]
    return BatchRecord(
        id=row["id"],
        account=row["account"],
        endpoint=row["endpoint"],
        completion_window=row["completion_window"],
        input_file_id=row["input_file_id"],
        status=Status(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        metadata=orjson.loads(row["metadata"]) if row["metadata"] is not None else None,
        model=row["model"],
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        errors=errors,
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        in_progress_at=row["in_progress_at"],
        finalizing_at=row["finalizing_at"],
        completed_at=row["completed_at"],
        failed_at=row["failed_at"],
        expired_at=row["expired_at"],
        cancelling_at=row["cancelling_at"],
        cancelled_at=row["cancelled_at"],
        output_expiry_seconds=row["output_expiry_seconds"],
        hash=row["hash"],
        usage=Usage(row["input_tokens"], row["output_tokens"], row["cached_tokens"],
                    row["reasoning_tokens"]),
        created_ms=row["created_ms"],
        metadata_json=None if metadata_json is None else bool(metadata_json),
        result_commits=row["result_commits"],
    )


def _file(row: Any) -> FileRecord:
    return FileRecord(
        id=row["id"], account=row["account"], filename=row["filename"],
        purpose=row["purpose"], bytes=row["bytes"], sha256=row["sha256"],
        created_at=row["created_at"], expires_at=row["expires_at"], lines=row["lines"],
    )


def _slice(row: Any) -> Slice:
    return Slice(
        batch_id=row["batch_id"], no=row["no"], start_line=row["start_line"],
        n_lines=row["n_lines"], start_offset=row["start_offset"],
        end_offset=row["end_offset"], committed_bytes=row["committed_bytes"],
        completed=row["completed"], failed=row["failed"], done=bool(row["done"]),
    )


def _lease(row: Any) -> Lease:
    return Lease(slice=_slice(row), token=row["lease_token"], node=row["lease_owner"],
                 expires_at=row["lease_expires"])


def _result(row: Any) -> StoredResult:
    return StoredResult(slice_no=row["slice_no"], index=row["idx"], ok=bool(row["ok"]),
                        line=bytes(row["line"]), commit_no=row["commit_no"])


def _group(row: Any) -> ResultGroup:
    return ResultGroup(
        commit_no=row["commit_no"], slice_no=row["slice_no"], n_ok=row["n_ok"],
        n_err=row["n_err"], ok_bytes=row["ok_bytes"], err_bytes=row["err_bytes"],
        part_start=row["part_start"], part_end=row["part_end"], ok_offset=row["ok_offset"],
        err_offset=row["err_offset"])


# One group of the log a call of ``record_progress`` adds per slice, as it adds up:
# [n_ok, n_err, ok_bytes, err_bytes, part_start, part_end].
LogGroup = list[int]


def _field_groups(progress: Sequence[SliceProgress]) -> dict[int, LogGroup]:
    """The log groups of the entries of ``progress`` without records (one machine's
    parts), one per slice: counts and bytes added up, the part range from the first
    entry's start to the last one's end. Entries that add nothing log nothing."""
    groups: dict[int, LogGroup] = {}
    for p in progress:
        if p.records or not (p.completed or p.failed):
            continue
        g = groups.get(p.no)
        if g is None:
            groups[p.no] = [p.completed, p.failed, p.ok_bytes, p.err_bytes, p.part_start,
                            p.committed_bytes]
        else:
            g[0] += p.completed
            g[1] += p.failed
            g[2] += p.ok_bytes
            g[3] += p.err_bytes
            g[5] = p.committed_bytes
    return groups


def _first_records(progress: Sequence[SliceProgress]) -> dict[tuple[int, int], tuple[bool, bytes]]:
    """The records of ``progress`` by (slice, index); of an index given twice, the first
    (one statement may not write a row twice, and a stored result never changes)."""
    records: dict[tuple[int, int], tuple[bool, bytes]] = {}
    for p in progress:
        for idx, ok, line in p.records:
            records.setdefault((p.no, idx), (ok, line))
    return records


# -- webhooks ------------------------------------------------------------------------------

_WEBHOOK_ENDPOINT_COLUMNS = "id, account, url, events, secret, created_at"
# Of ``webhook_deliveries AS d JOIN webhook_endpoints AS e ON e.id = d.endpoint_id``.
_WEBHOOK_DELIVERY_COLUMNS = (
    "d.event_id, d.type, d.batch_id, d.account, d.endpoint_id, e.url, d.attempts, d.status,"
    " d.last_status_code, d.last_error, d.last_attempt_at, d.next_attempt_at,"
    " d.delivered_at, d.created_at"
)
_WEBHOOK_CLAIM_COLUMNS = (
    "d.event_id, d.type, d.batch_id, d.endpoint_id, e.url, e.secret, d.attempts,"
    " d.created_at, d.claimed_by"
)


def _webhook_endpoint(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(id=row["id"], account=row["account"], url=row["url"],
                           events=tuple(orjson.loads(row["events"])), secret=row["secret"],
                           created_at=int(row["created_at"]))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _webhook_delivery(row: Any) -> WebhookDelivery:
    code = row["last_status_code"]
    return WebhookDelivery(
        event_id=row["event_id"], type=row["type"], batch_id=row["batch_id"],
        account=row["account"], endpoint_id=row["endpoint_id"], url=row["url"],
        attempts=int(row["attempts"]), status=DeliveryStatus(row["status"]),
        last_status_code=None if code is None else int(code), last_error=row["last_error"],
        last_attempt_at=_optional_float(row["last_attempt_at"]),
        next_attempt_at=_optional_float(row["next_attempt_at"]),
        delivered_at=_optional_float(row["delivered_at"]), created_at=int(row["created_at"]),
    )


def _webhook_claim(row: Any) -> WebhookClaim:
    return WebhookClaim(
        event_id=row["event_id"], type=row["type"], batch_id=row["batch_id"],
        endpoint_id=row["endpoint_id"], url=row["url"], secret=row["secret"],
        attempts=int(row["attempts"]), created_at=int(row["created_at"]),
        claimer=row["claimed_by"],
    )


def _attempt_outcome(attempt: WebhookAttempt) -> str:
    """The delivery's status after ``attempt``."""
    if attempt.delivered:
        return DeliveryStatus.DELIVERED.value
    if attempt.retry_in is None:
        return DeliveryStatus.GIVEN_UP.value
    return DeliveryStatus.FAILING.value
