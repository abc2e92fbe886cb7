"""Acceptance: bad input of every kind gets the right HTTP status and an OpenAI-shaped
error naming the parameter; nothing is half-written; the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from api.support import (
    CHAT,
    all_batch_ids,
    all_file_ids,
    assert_error_shape,
    auth_headers,
    chat_line,
    error_of,
    healthy,
    root_url,
    stored_blobs,
    to_jsonl,
    upload,
    wait_terminal,
)
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI
from upstream import UpstreamServer

Factory = Callable[..., BargeProcess]
Connect = Callable[..., OpenAI]


@pytest.fixture
def client(shared_barge: BargeProcess, connect: Connect) -> Iterator[OpenAI]:
    """A client of the module's shared barge; after each test the server must still be up
    and must hold no leftover half-written upload."""
    yield connect(shared_barge)
    assert healthy(shared_barge)
    assert stored_blobs(shared_barge.data_dir)["tmp"] == []


@pytest.fixture
def http(shared_barge: BargeProcess) -> Iterator[httpx.Client]:
    """Raw HTTP, for what the SDK cannot send."""
    with httpx.Client(base_url=shared_barge.base_url, headers=auth_headers(ADMIN_KEY),
                      timeout=30) as c:
        yield c


@pytest.fixture
def batch_file(client: OpenAI) -> str:
    return upload(client, [chat_line("a"), chat_line("b")]).id


# ---- unknown ids -------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["retrieve", "content", "delete"])
@pytest.mark.parametrize("file_id", ["file-000000000000000000000000", "file-nope", "..%2Fetc"])
def test_unknown_file_id_is_404(client: OpenAI, call: str, file_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        getattr(client.files, call)(file_id)
    error_of(exc.value, status=404)


@pytest.mark.parametrize("call", ["retrieve", "cancel"])
def test_unknown_batch_id_is_404(client: OpenAI, call: str) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        getattr(client.batches, call)("batch_000000000000000000000000")
    error_of(exc.value, status=404)


def test_unknown_input_file_is_rejected_naming_input_file_id(client: OpenAI) -> None:
    before = all_batch_ids(client)
    with pytest.raises(openai.APIStatusError) as exc:
        client.batches.create(input_file_id="file-000000000000000000000000", endpoint=CHAT,
                              completion_window="24h")
    assert exc.value.status_code in (400, 404)
    error_of(exc.value, status=exc.value.status_code, param="input_file_id")
    assert all_batch_ids(client) == before


def test_unknown_route_is_404_in_the_error_shape(http: httpx.Client) -> None:
    r = http.get("/nothing-here")
    assert r.status_code == 404
    assert_error_shape(r.json())


# ---- uploads -----------------------------------------------------------------------------

def test_wrong_purpose_is_400_and_stores_nothing(shared_barge: BargeProcess,
                                                 client: OpenAI) -> None:
    before, blobs = all_file_ids(client), stored_blobs(shared_barge.data_dir)
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("x.jsonl", to_jsonl([chat_line("a")])),
                            purpose="not-a-purpose")  # type: ignore[arg-type]
    error_of(exc.value, status=400, param="purpose")
    assert all_file_ids(client) == before
    assert stored_blobs(shared_barge.data_dir) == blobs


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe\x00\x01\x80\x81binary\x00\x00",
        to_jsonl([chat_line("a")]) + b"\xc3\x28\n",  # invalid UTF-8 after a good line
        "caf\u00e9".encode("latin-1") + b"\n",
        to_jsonl([chat_line("a")]) + b"\xe2\x82",  # truncated multi-byte sequence at EOF
    ],
    ids=["binary", "bad-sequence", "latin-1", "truncated"],
)
def test_non_utf8_batch_upload_is_400_and_stores_nothing(
    shared_barge: BargeProcess, client: OpenAI, data: bytes
) -> None:
    before, blobs = all_file_ids(client), stored_blobs(shared_barge.data_dir)
    with pytest.raises(openai.BadRequestError) as exc:
        upload(client, data)
    error_of(exc.value, status=400, param="file", code="invalid_file_encoding")
    assert all_file_ids(client) == before
    assert stored_blobs(shared_barge.data_dir) == blobs


def test_empty_batch_upload_is_400_and_stores_nothing(
    shared_barge: BargeProcess, client: OpenAI
) -> None:
    before, blobs = all_file_ids(client), stored_blobs(shared_barge.data_dir)
    with pytest.raises(openai.BadRequestError) as exc:
        upload(client, b"")
    error_of(exc.value, status=400, param="file", code="empty_file")
    assert all_file_ids(client) == before
    assert stored_blobs(shared_barge.data_dir) == blobs


def test_upload_over_max_file_bytes_is_413_and_leaves_nothing(
    barge_factory: Factory, upstream: UpstreamServer, connect: Connect
) -> None:
    proc = barge_factory(upstream.base_url, "--max-file-bytes", "1000")
    client = connect(proc)
    fits = b"x" * 1000
    assert upload(client, fits, purpose="user_data").bytes == 1000  # the limit itself is fine
    before, blobs = all_file_ids(client), stored_blobs(proc.data_dir)

    for size in (1001, 5_000_000):
        with pytest.raises(openai.APIStatusError) as exc:
            upload(client, to_jsonl([chat_line("a", content="y" * size)]))
        error_of(exc.value, status=413, param="file")
        assert all_file_ids(client) == before
        assert stored_blobs(proc.data_dir) == blobs  # no leftover bytes in files/ or tmp/
        assert blobs["tmp"] == []
        assert healthy(proc)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=XYZ", b"--XYZ\r\nthis is not a part\r\n"),
        ("multipart/form-data; boundary=XYZ",
         b'--XYZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--XYZ--\r\n'),
        ("multipart/form-data", b"no boundary"),
        ("application/json", b'{"purpose": "batch", "file": "abc"}'),
        ("text/plain", b"just text"),
    ],
    ids=["malformed", "no-file-part", "no-boundary", "json", "text"],
)
def test_malformed_upload_is_400_and_stores_nothing(
    shared_barge: BargeProcess, client: OpenAI, http: httpx.Client, content_type: str,
    body: bytes
) -> None:
    before, blobs = all_file_ids(client), stored_blobs(shared_barge.data_dir)
    r = http.post("/files", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert_error_shape(r.json())
    assert all_file_ids(client) == before
    assert stored_blobs(shared_barge.data_dir) == blobs


def test_two_file_parts_are_rejected(shared_barge: BargeProcess, client: OpenAI,
                                     http: httpx.Client) -> None:
    before = all_file_ids(client)
    line = to_jsonl([chat_line("a")])
    r = http.post("/files", data={"purpose": "batch"},
                  files=[("file", ("a.jsonl", line)), ("file", ("b.jsonl", line))])
    assert r.status_code == 400, r.text
    assert_error_shape(r.json(), param="file")
    assert all_file_ids(client) == before


def test_upload_without_purpose_is_400(client: OpenAI, http: httpx.Client) -> None:
    before = all_file_ids(client)
    r = http.post("/files", files={"file": ("a.jsonl", to_jsonl([chat_line("a")]))})
    assert r.status_code == 400, r.text
    assert_error_shape(r.json(), param="purpose")
    assert all_file_ids(client) == before


# ---- batch creation ----------------------------------------------------------------------

def test_batch_from_a_non_batch_file_is_400(client: OpenAI) -> None:
    other = upload(client, to_jsonl([chat_line("a")]), purpose="user_data")
    before = all_batch_ids(client)
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(input_file_id=other.id, endpoint=CHAT, completion_window="24h")
    error_of(exc.value, status=400, param="input_file_id")
    assert all_batch_ids(client) == before


@pytest.mark.parametrize("endpoint", ["/v1/images/generations", "/v1/bogus", "v1/chat/completions",
                                      "/v1/chat/completions/", ""])
def test_unsupported_endpoint_is_400(client: OpenAI, batch_file: str, endpoint: str) -> None:
    before = all_batch_ids(client)
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(input_file_id=batch_file, endpoint=endpoint,  # type: ignore[arg-type]
                              completion_window="24h")
    error_of(exc.value, status=400, param="endpoint")
    assert all_batch_ids(client) == before


@pytest.mark.parametrize("window", ["48h", "1h", "24", "24hours", "0h", "", "2s "])
def test_unsupported_completion_window_is_400(client: OpenAI, batch_file: str,
                                              window: str) -> None:
    before = all_batch_ids(client)
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(input_file_id=batch_file, endpoint=CHAT,
                              completion_window=window)  # type: ignore[arg-type]
    error_of(exc.value, status=400, param="completion_window")
    assert all_batch_ids(client) == before


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 1},
        {"k": None},
        {"k": {"nested": "x"}},
    ],
    ids=["17-pairs", "key-65", "value-513", "int-value", "null-value", "object-value"],
)
def test_metadata_over_the_limits_is_400(client: OpenAI, batch_file: str,
                                         metadata: dict[str, Any]) -> None:
    before = all_batch_ids(client)
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(input_file_id=batch_file, endpoint=CHAT, completion_window="24h",
                              metadata=metadata)
    error_of(exc.value, status=400, param="metadata")
    assert all_batch_ids(client) == before


def test_metadata_at_the_limits_is_accepted(client: OpenAI, batch_file: str) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert all(len(k) == 64 for k in metadata)
    b = client.batches.create(input_file_id=batch_file, endpoint=CHAT, completion_window="24h",
                              metadata=metadata)
    assert b.metadata == metadata
    assert client.batches.retrieve(b.id).metadata == metadata
    wait_terminal(client, b.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"endpoint": CHAT, "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": "FILE", "completion_window": "24h"}, "endpoint"),
        ({"input_file_id": "FILE", "endpoint": CHAT}, "completion_window"),
        ({"input_file_id": 123, "endpoint": CHAT, "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": "FILE", "endpoint": CHAT, "completion_window": "24h",
          "metadata": ["not", "a", "map"]}, "metadata"),
    ],
    ids=["no-input-file", "no-endpoint", "no-window", "input-file-not-string",
         "metadata-not-object"],
)
def test_missing_or_mistyped_create_parameters_are_400(
    client: OpenAI, batch_file: str, body: dict[str, Any], param: str
) -> None:
    body = {k: (batch_file if v == "FILE" else v) for k, v in body.items()}
    before = all_batch_ids(client)
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/batches", body=body, cast_to=httpx.Response)
    error_of(exc.value, status=400, param=param)
    assert all_batch_ids(client) == before


def test_missing_input_file_id_through_the_sdk(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(input_file_id=openai.omit,  # type: ignore[arg-type]
                              endpoint=CHAT, completion_window="24h")
    error_of(exc.value, status=400, param="input_file_id")


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"", b'"string"'])
def test_non_json_create_body_is_400(client: OpenAI, http: httpx.Client, body: bytes) -> None:
    before = all_batch_ids(client)
    r = http.post("/batches", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert_error_shape(r.json())
    assert all_batch_ids(client) == before


@pytest.mark.parametrize("seconds", [10, 2_592_001])
def test_output_expires_after_out_of_range_is_400(client: OpenAI, batch_file: str,
                                                  seconds: int) -> None:
    before = all_batch_ids(client)
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(input_file_id=batch_file, endpoint=CHAT, completion_window="24h",
                              output_expires_after={"anchor": "created_at",
                                                    "seconds": seconds})
    err = error_of(exc.value, status=400)
    assert err["param"] is not None and err["param"].startswith("output_expires_after")
    assert all_batch_ids(client) == before


# ---- listing -----------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [0, 101, -1])
def test_batches_list_limit_out_of_range_is_400(client: OpenAI, limit: int) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.list(limit=limit)
    error_of(exc.value, status=400, param="limit")


def test_batches_list_limit_bounds_are_accepted(client: OpenAI) -> None:
    assert client.batches.list(limit=1).data is not None
    assert client.batches.list(limit=100).data is not None


def test_batches_list_non_integer_limit_is_400(http: httpx.Client) -> None:
    r = http.get("/batches", params={"limit": "many"})
    assert r.status_code == 400
    assert_error_shape(r.json(), param="limit")


@pytest.mark.parametrize(("params", "param"), [({"limit": 0}, "limit"),
                                                ({"order": "sideways"}, "order")])
def test_files_list_bad_parameters_are_400(client: OpenAI, params: dict[str, Any],
                                           param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.list(**params)
    error_of(exc.value, status=400, param=param)


def test_list_after_an_unknown_id_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.batches.list(after="batch_000000000000000000000000")
    error_of(exc.value, status=404, param="after")
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.list(after="file-000000000000000000000000")
    error_of(exc.value, status=404, param="after")


def test_server_still_serves_after_bad_requests(shared_barge: BargeProcess,
                                                client: OpenAI) -> None:
    """After everything above on the same server, a normal batch still runs."""
    f = upload(client, [chat_line("after-all")])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert wait_terminal(client, b.id).status == "completed"
    assert httpx.get(f"{root_url(shared_barge)}/healthz", timeout=5).status_code == 200
