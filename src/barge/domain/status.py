"""The fine-grained batch lifecycle, its allowed moves, and its OpenAI projection."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a batch is, in detail. Stored as is; the OpenAI status is derived."""

    NEW = "new"  # created, nothing done yet
    COPYING = "copying"  # input file being read and hashed
    COPIED = "copied"  # input file read; hash (if any) matched
    HASH_MISMATCH = "hash_mismatch"  # terminal: the given hash did not match the file
    VALIDATING = "validating"  # every line being checked
    VALIDATION_FAILED = "validation_failed"  # terminal: some line was bad
    PROCESSING = "processing"  # requests being sent upstream
    PROCESSED = "processed"  # every request has a durable result
    WRITING_RESULTS = "writing_results"  # output and error files being written
    CANCEL = "cancel"  # a cancel was asked for
    CANCELLING = "cancelling"  # in-flight requests draining, partial results being written
    CANCELLED = "cancelled"  # terminal: stopped by a cancel, partial results published
    EXPIRED = "expired"  # terminal: not done within the completion window
    DELETING = "deleting"  # being deleted; gone from every listing
    COMPLETED = "completed"  # terminal: every request has a result


class OpenAIStatus(StrEnum):
    """The status the OpenAI Batch API exposes."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


PROJECTION: dict[Status, OpenAIStatus] = {
    Status.NEW: OpenAIStatus.VALIDATING,
    Status.COPYING: OpenAIStatus.VALIDATING,
    Status.COPIED: OpenAIStatus.VALIDATING,
    Status.VALIDATING: OpenAIStatus.VALIDATING,
    Status.HASH_MISMATCH: OpenAIStatus.FAILED,
    Status.VALIDATION_FAILED: OpenAIStatus.FAILED,
    Status.PROCESSING: OpenAIStatus.IN_PROGRESS,
    Status.PROCESSED: OpenAIStatus.FINALIZING,
    Status.WRITING_RESULTS: OpenAIStatus.FINALIZING,
    Status.CANCEL: OpenAIStatus.CANCELLING,
    Status.CANCELLING: OpenAIStatus.CANCELLING,
    Status.CANCELLED: OpenAIStatus.CANCELLED,
    Status.EXPIRED: OpenAIStatus.EXPIRED,
    Status.DELETING: OpenAIStatus.CANCELLED,  # never shown: deleting batches are hidden
    Status.COMPLETED: OpenAIStatus.COMPLETED,
}

TERMINAL = frozenset(
    {
        Status.HASH_MISMATCH,
        Status.VALIDATION_FAILED,
        Status.CANCELLED,
        Status.EXPIRED,
        Status.COMPLETED,
    }
)

# Statuses in which a cancel request is accepted.
CANCELLABLE = frozenset(
    {
        Status.NEW,
        Status.COPYING,
        Status.COPIED,
        Status.VALIDATING,
        Status.PROCESSING,
    }
)

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.COPYING, Status.CANCEL, Status.EXPIRED}),
    Status.COPYING: frozenset({Status.COPIED, Status.HASH_MISMATCH, Status.CANCEL, Status.EXPIRED}),
    Status.COPIED: frozenset({Status.VALIDATING, Status.CANCEL, Status.EXPIRED}),
    Status.VALIDATING: frozenset(
        {Status.PROCESSING, Status.VALIDATION_FAILED, Status.CANCEL, Status.EXPIRED}
    ),
    Status.PROCESSING: frozenset({Status.PROCESSED, Status.CANCEL, Status.EXPIRED}),
    Status.PROCESSED: frozenset({Status.WRITING_RESULTS}),
    Status.WRITING_RESULTS: frozenset({Status.COMPLETED}),
    Status.CANCEL: frozenset({Status.CANCELLING}),
    Status.CANCELLING: frozenset({Status.CANCELLED}),
    Status.HASH_MISMATCH: frozenset({Status.DELETING}),
    Status.VALIDATION_FAILED: frozenset({Status.DELETING}),
    Status.CANCELLED: frozenset({Status.DELETING}),
    Status.EXPIRED: frozenset({Status.DELETING}),
    Status.COMPLETED: frozenset({Status.DELETING}),
    Status.DELETING: frozenset(),
}

# The OpenAI timestamp field set when a batch enters a status (first time only).
STAMPS: dict[Status, str] = {
    Status.PROCESSING: "in_progress_at",
    Status.PROCESSED: "finalizing_at",
    Status.WRITING_RESULTS: "finalizing_at",
    Status.COMPLETED: "completed_at",
    Status.HASH_MISMATCH: "failed_at",
    Status.VALIDATION_FAILED: "failed_at",
    Status.EXPIRED: "expired_at",
    Status.CANCEL: "cancelling_at",
    Status.CANCELLING: "cancelling_at",
    Status.CANCELLED: "cancelled_at",
}


def can_transition(current: Status, target: Status) -> bool:
    """Whether the lifecycle allows moving from ``current`` to ``target``."""
    return target in TRANSITIONS[current]


def project(status: Status) -> OpenAIStatus:
    """The OpenAI status a fine-grained status shows as."""
    return PROJECTION[status]


assert set(TRANSITIONS) == set(Status), "every status needs a row in TRANSITIONS"
assert set(PROJECTION) == set(Status), "every status needs an OpenAI projection"
