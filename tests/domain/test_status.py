"""The batch lifecycle table, its OpenAI projection, and its timestamps.

The expected values are written out here from the specs, never derived from the module under
test, so that a change to ``barge.domain.status`` has to be matched by a change to this file.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from barge.domain.models import BatchRecord
from barge.domain.status import (
    CANCELLABLE,
    PROJECTION,
    STAMPS,
    TERMINAL,
    TRANSITIONS,
    OpenAIStatus,
    Status,
    can_transition,
    project,
)

S = Status

ALL_STATUS_VALUES = {
    "new",
    "copying",
    "copied",
    "hash_mismatch",
    "validating",
    "validation_failed",
    "processing",
    "processed",
    "writing_results",
    "cancel",
    "cancelling",
    "cancelled",
    "expired",
    "deleting",
    "completed",
}

# Every allowed (from, to) move, written out by hand.
EXPECTED_ALLOWED: set[tuple[Status, Status]] = {
    (S.NEW, S.COPYING),
    (S.NEW, S.CANCEL),
    (S.NEW, S.EXPIRED),
    (S.COPYING, S.COPIED),
    (S.COPYING, S.HASH_MISMATCH),
    (S.COPYING, S.CANCEL),
    (S.COPYING, S.EXPIRED),
    (S.COPIED, S.VALIDATING),
    (S.COPIED, S.CANCEL),
    (S.COPIED, S.EXPIRED),
    (S.VALIDATING, S.PROCESSING),
    (S.VALIDATING, S.VALIDATION_FAILED),
    (S.VALIDATING, S.CANCEL),
    (S.VALIDATING, S.EXPIRED),
    (S.PROCESSING, S.PROCESSED),
    (S.PROCESSING, S.CANCEL),
    (S.PROCESSING, S.EXPIRED),
    (S.PROCESSED, S.WRITING_RESULTS),
    (S.WRITING_RESULTS, S.COMPLETED),
    (S.CANCEL, S.CANCELLING),
    (S.CANCELLING, S.CANCELLED),
    (S.HASH_MISMATCH, S.DELETING),
    (S.VALIDATION_FAILED, S.DELETING),
    (S.CANCELLED, S.DELETING),
    (S.EXPIRED, S.DELETING),
    (S.COMPLETED, S.DELETING),
}

EXPECTED_TERMINAL = {S.HASH_MISMATCH, S.VALIDATION_FAILED, S.CANCELLED, S.EXPIRED, S.COMPLETED}
EXPECTED_CANCELLABLE = {S.NEW, S.COPYING, S.COPIED, S.VALIDATING, S.PROCESSING}

# The table "Mapping onto the OpenAI projection" in specs/batch-operations-api.md.
# ``deleting`` is not in it: such a batch disappears (404) instead of being shown.
SPEC_PROJECTION: dict[str, str] = {
    "new": "validating",
    "copying": "validating",
    "copied": "validating",
    "validating": "validating",
    "hash_mismatch": "failed",
    "validation_failed": "failed",
    "processing": "in_progress",
    "processed": "finalizing",
    "writing_results": "finalizing",
    "completed": "completed",
    "cancel": "cancelling",
    "cancelling": "cancelling",
    "cancelled": "cancelled",
    "expired": "expired",
}

# The OpenAI status values of specs/openai-batch-api.md.
OPENAI_STATUS_VALUES = {
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
}

# The timestamp a batch gets when it first enters a status.
EXPECTED_STAMPS = {
    S.PROCESSING: "in_progress_at",
    S.PROCESSED: "finalizing_at",
    S.WRITING_RESULTS: "finalizing_at",
    S.COMPLETED: "completed_at",
    S.HASH_MISMATCH: "failed_at",
    S.VALIDATION_FAILED: "failed_at",
    S.EXPIRED: "expired_at",
    S.CANCEL: "cancelling_at",
    S.CANCELLING: "cancelling_at",
    S.CANCELLED: "cancelled_at",
}

OPENAI_TIMESTAMPS = {
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
}

ALL_PAIRS = list(itertools.product(list(Status), repeat=2))


def test_status_values_are_the_fifteen_of_the_spec() -> None:
    assert {s.value for s in Status} == ALL_STATUS_VALUES
    assert len(Status) == 15


def test_expected_table_only_names_real_statuses() -> None:
    for a, b in EXPECTED_ALLOWED:
        assert isinstance(a, Status)
        assert isinstance(b, Status)


def test_all_pairs_are_enumerated() -> None:
    assert len(ALL_PAIRS) == 15 * 15


@pytest.mark.parametrize(
    ("current", "target"), ALL_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ALL_PAIRS]
)
def test_transition_table(current: Status, target: Status) -> None:
    expected = (current, target) in EXPECTED_ALLOWED
    assert can_transition(current, target) is expected
    assert (target in TRANSITIONS[current]) is expected


def test_transitions_has_a_row_for_every_status() -> None:
    assert set(TRANSITIONS) == set(Status)


def test_no_status_moves_to_itself() -> None:
    for s in Status:
        assert not can_transition(s, s)


def test_terminal_set() -> None:
    assert set(TERMINAL) == EXPECTED_TERMINAL


@pytest.mark.parametrize("status", sorted(EXPECTED_TERMINAL), ids=str)
def test_terminal_statuses_only_lead_to_deleting(status: Status) -> None:
    assert TRANSITIONS[status] == frozenset({S.DELETING})
    for target in Status:
        assert can_transition(status, target) is (target is S.DELETING)


def test_deleting_is_a_dead_end() -> None:
    assert TRANSITIONS[S.DELETING] == frozenset()


def test_only_terminal_statuses_may_be_deleted() -> None:
    assert {a for a, b in EXPECTED_ALLOWED if b is S.DELETING} == EXPECTED_TERMINAL
    assert {s for s in Status if can_transition(s, S.DELETING)} == EXPECTED_TERMINAL


def test_every_unfinished_status_reaches_a_terminal_one() -> None:
    """No status but ``deleting`` is a dead end: work always has a way to finish."""
    for start in Status:
        if start is S.DELETING:
            continue
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & EXPECTED_TERMINAL or start in EXPECTED_TERMINAL, start


def test_cancellable_set() -> None:
    assert set(CANCELLABLE) == EXPECTED_CANCELLABLE
    for s in CANCELLABLE:
        assert can_transition(s, S.CANCEL)
    assert {s for s in Status if can_transition(s, S.CANCEL)} == EXPECTED_CANCELLABLE


@pytest.mark.parametrize("status", sorted(SPEC_PROJECTION), ids=str)
def test_projection_matches_spec_table(status: str) -> None:
    shown = project(Status(status))
    assert isinstance(shown, OpenAIStatus)
    assert shown.value == SPEC_PROJECTION[status]
    assert PROJECTION[Status(status)].value == SPEC_PROJECTION[status]


def test_spec_projection_table_covers_every_status_but_deleting() -> None:
    assert set(SPEC_PROJECTION) == ALL_STATUS_VALUES - {"deleting"}


def test_every_status_projects_onto_an_openai_status() -> None:
    assert {s.value for s in OpenAIStatus} == OPENAI_STATUS_VALUES
    for s in Status:
        assert project(s).value in OPENAI_STATUS_VALUES


def test_terminal_statuses_project_onto_terminal_openai_statuses() -> None:
    for s in EXPECTED_TERMINAL:
        assert project(s).value in {"failed", "completed", "expired", "cancelled"}
    for s in set(Status) - EXPECTED_TERMINAL - {S.DELETING}:
        assert project(s).value in {"validating", "in_progress", "finalizing", "cancelling"}


def test_stamps_table() -> None:
    assert dict(STAMPS) == EXPECTED_STAMPS


def test_stamp_fields_exist_on_batch_record() -> None:
    fields = {f.name: f for f in dataclasses.fields(BatchRecord)}
    for status, name in STAMPS.items():
        assert name in fields, (status, name)
        assert fields[name].default is None, name


def test_every_openai_timestamp_is_stamped_by_some_status() -> None:
    assert set(STAMPS.values()) == OPENAI_TIMESTAMPS


def test_stamped_statuses_are_reachable() -> None:
    targets = {b for _, b in EXPECTED_ALLOWED}
    for status in STAMPS:
        assert status in targets
