"""The OpenAI wire shapes of Barge's records, checked against the spec and the official SDK."""

from __future__ import annotations

import time
from typing import Any

import openai.types
import orjson
import pytest

from barge.domain.models import BatchRecord, FileRecord, LineError
from barge.domain.projection import batch_object, file_object
from barge.domain.status import Status

# The Batch object of specs/openai-batch-api.md, field by field.
BATCH_REQUIRED = {
    "id",
    "object",
    "endpoint",
    "completion_window",
    "created_at",
    "input_file_id",
    "status",
}
BATCH_OPTIONAL = {
    "model",
    "errors",
    "output_file_id",
    "error_file_id",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "usage",
    "metadata",
}
BATCH_TIMESTAMPS = {
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
}
# Barge's own additions, documented in projection.py.
BARGE_EXTRAS = {"barge_status", "updated_at", "barge_eta"}
OPENAI_STATUSES = {
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
}

FILE_REQUIRED = {"id", "object", "bytes", "created_at", "filename", "purpose", "status"}
FILE_OPTIONAL = {"expires_at", "status_details"}
FILE_PURPOSES = {
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
}

# What each fine-grained status shows as (specs/batch-operations-api.md).
SHOWN = {
    Status.NEW: "validating",
    Status.COPYING: "validating",
    Status.COPIED: "validating",
    Status.VALIDATING: "validating",
    Status.HASH_MISMATCH: "failed",
    Status.VALIDATION_FAILED: "failed",
    Status.PROCESSING: "in_progress",
    Status.PROCESSED: "finalizing",
    Status.WRITING_RESULTS: "finalizing",
    Status.COMPLETED: "completed",
    Status.CANCEL: "cancelling",
    Status.CANCELLING: "cancelling",
    Status.CANCELLED: "cancelled",
    Status.EXPIRED: "expired",
}

T0 = 1_700_000_000


def batch(status: Status = Status.NEW, **changes: Any) -> BatchRecord:
    record = BatchRecord(
        id="batch_0123456789abcdef01234567",
        account="acct",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        input_file_id="file-0123456789abcdef01234567",
        status=status,
        created_at=T0,
        updated_at=T0 + 0.5,
        expires_at=T0 + 86400,
    )
    return record.replace(**changes)


def realistic(status: Status) -> BatchRecord:
    """A record in ``status`` carrying the fields a batch there would have."""
    b = batch(status, metadata={"project": "x"})
    after_validation = {
        Status.PROCESSING, Status.PROCESSED, Status.WRITING_RESULTS, Status.COMPLETED,
    }
    if status in after_validation:
        b = b.replace(model="gpt-test", total=10, in_progress_at=T0 + 1)
    if status in {Status.PROCESSED, Status.WRITING_RESULTS, Status.COMPLETED}:
        b = b.replace(completed=8, failed=2, finalizing_at=T0 + 2)
    if status is Status.COMPLETED:
        b = b.replace(
            completed_at=T0 + 3,
            output_file_id="file-out0123456789abcdef0123",
            error_file_id="file-err0123456789abcdef0123",
        )
    if status is Status.VALIDATION_FAILED:
        b = b.replace(
            total=3,
            failed_at=T0 + 1,
            errors=[
                LineError("invalid_json_line", "Line is not valid JSON.", 2),
                LineError("missing_model", "The 'body' needs a string 'model'.", 3, "body.model"),
            ],
        )
    if status is Status.HASH_MISMATCH:
        b = b.replace(failed_at=T0 + 1, errors=[LineError("hash_mismatch", "Hash differs.")])
    if status in {Status.CANCEL, Status.CANCELLING, Status.CANCELLED}:
        b = b.replace(cancelling_at=T0 + 1)
    if status is Status.CANCELLED:
        b = b.replace(cancelled_at=T0 + 2, output_file_id="file-out0123456789abcdef0123")
    if status is Status.EXPIRED:
        b = b.replace(expired_at=T0 + 86400, error_file_id="file-err0123456789abcdef0123")
    return b


def file(**changes: Any) -> FileRecord:
    defaults: dict[str, Any] = {
        "id": "file-0123456789abcdef01234567",
        "account": "acct",
        "filename": "input.jsonl",
        "purpose": "batch",
        "bytes": 1234,
        "sha256": "ab" * 32,
        "created_at": T0,
        "expires_at": T0 + 30 * 86400,
        "lines": 10,
    }
    defaults.update(changes)
    return FileRecord(**defaults)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_or_none(v: Any) -> bool:
    return v is None or _is_int(v)


class TestBatchObject:
    def test_has_every_field_of_the_spec(self) -> None:
        obj = batch_object(batch())
        assert set(obj) >= BATCH_REQUIRED
        assert set(obj) >= BATCH_OPTIONAL
        assert set(obj) - BATCH_REQUIRED - BATCH_OPTIONAL == BARGE_EXTRAS

    @pytest.mark.parametrize("status", list(SHOWN), ids=str)
    def test_field_types(self, status: Status) -> None:
        obj = batch_object(realistic(status))
        assert obj["object"] == "batch"
        assert isinstance(obj["id"], str)
        assert obj["id"].startswith("batch_")
        assert obj["endpoint"] == "/v1/chat/completions"
        assert obj["completion_window"] == "24h"
        assert _is_int(obj["created_at"])
        assert _is_int(obj["expires_at"])
        assert isinstance(obj["input_file_id"], str)
        assert obj["status"] in OPENAI_STATUSES
        assert obj["model"] is None or isinstance(obj["model"], str)
        for name in ("output_file_id", "error_file_id"):
            assert obj[name] is None or isinstance(obj[name], str)
        for name in BATCH_TIMESTAMPS:
            assert _int_or_none(obj[name]), name
        counts = obj["request_counts"]
        assert set(counts) == {"total", "completed", "failed"}
        assert all(_is_int(v) for v in counts.values())
        assert obj["usage"] is None
        assert obj["metadata"] is None or isinstance(obj["metadata"], dict)
        assert obj["barge_status"] == status.value
        assert type(obj["updated_at"]) is int  # whole Unix seconds, like created_at
        assert _int_or_none(obj["barge_eta"])

    @pytest.mark.parametrize("status", list(SHOWN), ids=str)
    def test_status_is_the_projection(self, status: Status) -> None:
        assert batch_object(batch(status))["status"] == SHOWN[status]
        assert batch_object(batch(status))["barge_status"] == status.value

    def test_values_are_carried_over(self) -> None:
        b = realistic(Status.COMPLETED)
        obj = batch_object(b)
        assert obj["id"] == b.id
        assert obj["input_file_id"] == b.input_file_id
        assert obj["created_at"] == T0
        assert obj["expires_at"] == T0 + 86400
        assert obj["in_progress_at"] == T0 + 1
        assert obj["finalizing_at"] == T0 + 2
        assert obj["completed_at"] == T0 + 3
        assert obj["failed_at"] is None
        assert obj["cancelled_at"] is None
        assert obj["model"] == "gpt-test"
        assert obj["output_file_id"] == b.output_file_id
        assert obj["error_file_id"] == b.error_file_id
        assert obj["metadata"] == {"project": "x"}
        assert obj["updated_at"] == T0  # T0 + 0.5, in whole seconds

    def test_errors_none_without_errors(self) -> None:
        assert batch_object(batch())["errors"] is None
        assert batch_object(batch(Status.COMPLETED))["errors"] is None

    def test_errors_list_with_lines(self) -> None:
        obj = batch_object(realistic(Status.VALIDATION_FAILED))
        errors = obj["errors"]
        assert errors["object"] == "list"
        assert errors["data"] == [
            {"code": "invalid_json_line", "message": "Line is not valid JSON.", "param": None,
             "line": 2},
            {"code": "missing_model", "message": "The 'body' needs a string 'model'.",
             "param": "body.model", "line": 3},
        ]
        assert obj["status"] == "failed"

    def test_file_level_error_has_null_line(self) -> None:
        obj = batch_object(batch(Status.VALIDATION_FAILED,
                                 errors=[LineError("empty_file", "No requests.")]))
        assert obj["errors"]["data"] == [
            {"code": "empty_file", "message": "No requests.", "param": None, "line": None}
        ]

    def test_request_counts(self) -> None:
        obj = batch_object(batch(Status.PROCESSING, total=10, completed=4, failed=1))
        assert obj["request_counts"] == {"total": 10, "completed": 4, "failed": 1}
        assert batch_object(batch())["request_counts"] == {"total": 0, "completed": 0,
                                                           "failed": 0}

    def test_metadata_none_and_dict(self) -> None:
        assert batch_object(batch())["metadata"] is None
        assert batch_object(batch(metadata={}))["metadata"] == {}
        assert batch_object(batch(metadata={"a": "b"}))["metadata"] == {"a": "b"}

    def test_serialises_to_json(self) -> None:
        obj = batch_object(realistic(Status.VALIDATION_FAILED))
        assert orjson.loads(orjson.dumps(obj)) == obj

    @pytest.mark.parametrize("status", list(SHOWN), ids=str)
    def test_sdk_parses_it(self, status: Status) -> None:
        obj = batch_object(realistic(status))
        parsed = openai.types.Batch.model_validate(obj)
        assert parsed.id == obj["id"]
        assert parsed.status == SHOWN[status]
        assert parsed.request_counts is not None
        assert parsed.request_counts.total == obj["request_counts"]["total"]
        if obj["errors"] is not None:
            assert parsed.errors is not None
            assert parsed.errors.data is not None
            assert [e.line for e in parsed.errors.data] == [
                e["line"] for e in obj["errors"]["data"]
            ]

    def test_sdk_parses_it_after_a_json_round_trip(self) -> None:
        for status in SHOWN:
            raw = orjson.dumps(batch_object(realistic(status)))
            parsed = openai.types.Batch.model_validate_json(raw)
            assert parsed.status == SHOWN[status]


class TestBargeEta:
    """``barge_eta``: now + remaining * (now - in_progress_at) / done, in progress."""

    NOW = T0 + 101.5

    def at(self, b: BatchRecord) -> Any:
        return batch_object(b, now=self.NOW)["barge_eta"]

    def test_in_progress_extrapolates_the_pace_so_far(self) -> None:
        # 100.5 s for 4 + 1 done: 5 remaining take as long again.
        b = batch(Status.PROCESSING, total=10, completed=4, failed=1, in_progress_at=T0 + 1)
        assert self.at(b) == int(self.NOW + 5 * 100.5 / 5) == T0 + 202
        # Failures count as done, as completions do.
        assert self.at(b.replace(completed=0, failed=5)) == T0 + 202
        # 1 of 10 done in 100.5 s: 9 more take 904.5 s.
        assert self.at(b.replace(completed=1, failed=0)) == int(self.NOW + 904.5)

    def test_is_a_whole_number_of_seconds(self) -> None:
        b = batch(Status.PROCESSING, total=3, completed=1, in_progress_at=T0 + 1)
        assert type(self.at(b)) is int

    def test_in_progress_with_nothing_done_is_null(self) -> None:
        b = batch(Status.PROCESSING, total=10, in_progress_at=T0 + 1)
        assert self.at(b) is None

    def test_in_progress_with_everything_done_is_now(self) -> None:
        b = batch(Status.PROCESSING, total=10, completed=10, in_progress_at=T0 + 1)
        assert self.at(b) == int(self.NOW)

    def test_a_clock_behind_in_progress_at_gives_now(self) -> None:
        b = batch(Status.PROCESSING, total=10, completed=2, in_progress_at=int(self.NOW) + 60)
        assert self.at(b) == int(self.NOW)

    @pytest.mark.parametrize("status", [Status.PROCESSED, Status.WRITING_RESULTS], ids=str)
    def test_finalizing_is_now(self, status: Status) -> None:
        assert self.at(realistic(status)) == int(self.NOW)

    @pytest.mark.parametrize("status", [s for s, shown in SHOWN.items()
                                        if shown not in {"in_progress", "finalizing"}],
                             ids=str)
    def test_null_in_every_other_state(self, status: Status) -> None:
        assert self.at(realistic(status)) is None
        # Even with requests done (a cancelled or expired batch, say).
        assert self.at(realistic(status).replace(total=10, completed=5,
                                                 in_progress_at=T0 + 1)) is None

    def test_defaults_to_the_clock(self) -> None:
        b = batch(Status.PROCESSING, total=10, completed=10, in_progress_at=T0 + 1)
        before = int(time.time())
        assert before <= batch_object(b)["barge_eta"] <= time.time()

    def test_the_sdk_keeps_it_as_an_extra(self) -> None:
        b = batch(Status.PROCESSING, total=10, completed=5, in_progress_at=T0 + 1)
        parsed = openai.types.Batch.model_validate_json(
            orjson.dumps(batch_object(b, now=self.NOW)))
        assert parsed.model_extra is not None
        assert parsed.model_extra["barge_eta"] == int(self.NOW + 100.5)
        assert parsed.status == "in_progress"


class TestFileObject:
    def test_has_every_field_of_the_spec(self) -> None:
        obj = file_object(file())
        assert set(obj) >= FILE_REQUIRED
        assert set(obj) >= FILE_OPTIONAL

    def test_field_types_and_values(self) -> None:
        f = file()
        obj = file_object(f)
        assert obj["object"] == "file"
        assert obj["id"] == f.id
        assert obj["id"].startswith("file-")
        assert _is_int(obj["bytes"])
        assert obj["bytes"] == 1234
        assert _is_int(obj["created_at"])
        assert obj["created_at"] == T0
        assert obj["expires_at"] == T0 + 30 * 86400
        assert obj["filename"] == "input.jsonl"
        assert obj["purpose"] == "batch"
        assert obj["status"] in {"uploaded", "processed", "error"}
        assert "account" not in obj  # never leaks the owner

    def test_expires_at_may_be_null(self) -> None:
        assert file_object(file(expires_at=None))["expires_at"] is None

    @pytest.mark.parametrize("purpose", ["batch", "batch_output", "user_data", "fine-tune"])
    @pytest.mark.parametrize("expires_at", [None, T0 + 3600])
    def test_sdk_parses_it(self, purpose: str, expires_at: int | None) -> None:
        obj = file_object(file(purpose=purpose, expires_at=expires_at))
        assert purpose in FILE_PURPOSES
        parsed = openai.types.FileObject.model_validate(obj)
        assert parsed.id == obj["id"]
        assert parsed.bytes == obj["bytes"]
        assert parsed.purpose == purpose
        assert parsed.expires_at == expires_at
        assert parsed.object == "file"
