"""scan_input on real files: slices, per-line errors, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from barge.domain.validation import LineCodes
from barge.engine.scan import MAX_REPORTED_ERRORS, ScanResult, scan_input
from barge.upstreams.config import UpstreamSpec, serves_any

CHAT = "/v1/chat/completions"


def req(custom_id: str, model: str = "gpt-test", url: str = CHAT, **extra: Any) -> bytes:
    obj: dict[str, Any] = {"custom_id": custom_id, "method": "POST", "url": url,
                           "body": {"model": model, "messages": [{"role": "user",
                                                                  "content": "hi"}]}}
    obj.update(extra)
    return orjson.dumps(obj)


def scan(path: Path, *, slice_lines: int = 1000, max_requests: int = 50_000,
         max_bytes: int = 200 * 1024 * 1024, endpoint: str = CHAT) -> ScanResult:
    return scan_input(path, batch_id="batch_t", endpoint=endpoint, max_requests=max_requests,
                      max_bytes=max_bytes, slice_lines=slice_lines)


def split_lines(data: bytes) -> list[bytes]:
    """Lines as a file object yields them: split after each b"\\n" only."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    return lines + ([parts[-1]] if parts[-1] else [])


def check_slices(path: Path, result: ScanResult, slice_lines: int) -> None:
    """Slices tile the file: consecutive, each byte range holds exactly its lines."""
    data = path.read_bytes()
    physical = split_lines(data)
    assert result.slices, "a non-empty file has slices"
    line, offset = 0, 0
    for no, s in enumerate(result.slices):
        assert s.batch_id == "batch_t"
        assert s.no == no
        assert s.start_line == line
        assert s.start_offset == offset
        assert 1 <= s.n_lines <= slice_lines
        if no < len(result.slices) - 1:
            assert s.n_lines == slice_lines
        chunk = data[s.start_offset:s.end_offset]
        lines = split_lines(chunk)
        assert len(lines) == s.n_lines
        assert lines == physical[s.start_line:s.start_line + s.n_lines]
        assert (s.committed_bytes, s.completed, s.failed, s.done) == (0, 0, 0, False)
        line += s.n_lines
        offset = s.end_offset
    assert line == len(physical)
    assert offset == len(data)


LAYOUTS: dict[str, list[bytes]] = {
    "plain": [req(f"c{i}") for i in range(10)],
    "blank_lines": [b"", req("a"), b"   ", req("b"), b"", b"", req("c"), b"\t", req("d")],
    "blank_at_end": [req("a"), req("b"), b"", b""],
    "one_line": [req("only")],
    "crlf": [req("a") + b"\r", req("b") + b"\r", req("c") + b"\r"],
}


@pytest.mark.parametrize("slice_lines", [1, 3, 1000])
@pytest.mark.parametrize("trailing_newline", [True, False])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_slices_cover_every_line_once(tmp_path: Path, layout: str, trailing_newline: bool,
                                      slice_lines: int) -> None:
    lines = LAYOUTS[layout]
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    result = scan(path, slice_lines=slice_lines)
    assert result.errors == [] and result.error_count == 0
    requests = [x for x in lines if x.strip()]
    assert result.total == len(requests)
    assert result.model == "gpt-test"
    check_slices(path, result, slice_lines)
    n_physical = len(split_lines(data))
    assert len(result.slices) == -(-n_physical // slice_lines)


def test_slice_boundaries_on_exact_multiples(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(req(f"c{i}") + b"\n" for i in range(9)))
    result = scan(path, slice_lines=3)
    assert [(s.start_line, s.n_lines) for s in result.slices] == [(0, 3), (3, 3), (6, 3)]
    check_slices(path, result, 3)


def test_model_is_the_first_valid_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(req("a", model="m-1") + b"\n" + req("b", model="m-2") + b"\n")
    assert scan(path).model == "m-1"


def test_errors_carry_one_based_physical_line_numbers(tmp_path: Path) -> None:
    lines = [
        req("a"),                        # 1 ok
        b"",                             # 2 blank
        b"{not json",                    # 3
        req("b"),                        # 4 ok
        req("a"),                        # 5 duplicate of line 1
        req("c", url="/v1/embeddings"),  # 6 wrong url
        b"[1, 2]",                       # 7 not an object
        req("d", method="GET"),          # 8
        orjson.dumps({"custom_id": "e", "method": "POST", "url": CHAT, "body": {}}),  # 9
        orjson.dumps({"method": "POST", "url": CHAT, "body": {"model": "m"}}),  # 10
        orjson.dumps({"custom_id": "f", "method": "POST", "url": CHAT, "body": "x"}),  # 11
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = scan(path)
    got = [(e.code, e.line) for e in result.errors]
    assert got == [
        (LineCodes.INVALID_JSON, 3),
        (LineCodes.DUPLICATE_CUSTOM_ID, 5),
        (LineCodes.INVALID_URL, 6),
        (LineCodes.INVALID_JSON, 7),
        (LineCodes.INVALID_METHOD, 8),
        (LineCodes.MISSING_MODEL, 9),
        (LineCodes.MISSING_CUSTOM_ID, 10),
        (LineCodes.INVALID_BODY, 11),
    ]
    assert result.error_count == 8
    assert result.total == 10  # every non-blank line counts as a request


def test_reported_errors_are_capped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"nope\n" * (MAX_REPORTED_ERRORS + 5))
    result = scan(path)
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert result.error_count == MAX_REPORTED_ERRORS + 5
    assert result.errors[-1].line == MAX_REPORTED_ERRORS


def test_max_requests(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([req("a"), b"", req("b"), req("c"), req("d"), req("e")]))
    result = scan(path, max_requests=3)
    assert [(e.code, e.line) for e in result.errors] == [(LineCodes.TOO_MANY_REQUESTS, 5)]
    ok = scan(path, max_requests=5)
    assert ok.errors == [] and ok.total == 5


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    data = req("a") + b"\n"
    path.write_bytes(data)
    result = scan(path, max_bytes=len(data) - 1)
    assert [(e.code, e.line) for e in result.errors] == [(LineCodes.FILE_TOO_LARGE, None)]
    assert result.slices == [] and result.total == 0
    assert scan(path, max_bytes=len(data)).errors == []


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n  \n\t\n", b"   "])
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    result = scan(path)
    assert [(e.code, e.line) for e in result.errors] == [(LineCodes.EMPTY_FILE, None)]
    assert result.total == 0


def test_ten_megabyte_single_line(tmp_path: Path) -> None:
    big = "x" * (10 * 1024 * 1024)
    raw = orjson.dumps({"custom_id": "big", "method": "POST", "url": CHAT,
                        "body": {"model": "m-big",
                                 "messages": [{"role": "user", "content": big}]}})
    path = tmp_path / "in.jsonl"
    path.write_bytes(raw)  # no trailing newline
    result = scan(path, slice_lines=3)
    assert result.errors == []
    assert result.total == 1 and result.model == "m-big"
    assert len(result.slices) == 1
    s = result.slices[0]
    assert (s.start_line, s.n_lines, s.start_offset, s.end_offset) == (0, 1, 0, len(raw))


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("slice_lines", [1, 2, 1000])
def test_a_bom_is_skipped_and_the_first_slice_starts_after_it(tmp_path: Path,
                                                              slice_lines: int) -> None:
    lines = [req("a"), b"", req("b"), req("c")]
    data = BOM + b"\n".join(lines) + b"\n"
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    result = scan(path, slice_lines=slice_lines)
    assert result.errors == [] and result.total == 3
    first = result.slices[0]
    assert (first.start_line, first.start_offset) == (0, len(BOM))
    # Past the mark, the slices tile the file exactly as they would without it.
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(data[len(BOM):])
    expected = scan(plain, slice_lines=slice_lines).slices
    assert [(s.start_line, s.n_lines, s.start_offset + len(BOM), s.end_offset + len(BOM))
            for s in expected] == [(s.start_line, s.n_lines, s.start_offset, s.end_offset)
                                   for s in result.slices]
    assert result.slices[-1].end_offset == len(data)


def test_a_bom_keeps_line_numbers_and_only_counts_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(BOM + b"{bad\n" + req("a") + b"\n" + BOM + req("b") + b"\n")
    result = scan(path)
    # Line 1 is bad on its own merits; a mark anywhere but the start is no mark.
    assert [(e.code, e.line) for e in result.errors] == [
        (LineCodes.INVALID_JSON, 1), (LineCodes.INVALID_JSON, 3)]


@pytest.mark.parametrize("data", [BOM, BOM + b"\n", BOM + b"  \n\n"])
def test_a_bom_alone_is_an_empty_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    result = scan(path)
    assert [(e.code, e.line) for e in result.errors] == [(LineCodes.EMPTY_FILE, None)]


# -- models no upstream serves ------------------------------------------------------------


def test_a_model_no_upstream_serves_fails_its_lines(tmp_path: Path) -> None:
    specs = (UpstreamSpec(name="a", url="http://a/v1", models=("a-*",)),
             UpstreamSpec(name="b", url="http://b/v1", models=("b",)))
    asked: list[str] = []

    def serves(model: str) -> bool:
        asked.append(model)
        return serves_any(specs, model)

    path = tmp_path / "in.jsonl"
    lines = [req("r1", "a-1"), req("r2", "c"), req("r3", "b"), b"", req("r5", "c"),
             req("r6", "a-2"), req("r2", "c"), b"{bad", req("r9", "a-1")]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = scan_input(path, batch_id="batch_t", endpoint=CHAT, max_requests=100,
                        max_bytes=1 << 20, slice_lines=3, serves=serves)
    # A duplicate (line 7) and a bad line (8) are their own errors, not model_not_found.
    assert [(e.code, e.line) for e in result.errors] == [
        (LineCodes.MODEL_NOT_FOUND, 2), (LineCodes.MODEL_NOT_FOUND, 5),
        (LineCodes.DUPLICATE_CUSTOM_ID, 7), (LineCodes.INVALID_JSON, 8),
    ]
    miss = result.errors[0]
    assert miss.code == "model_not_found"
    assert miss.message == "No upstream serves the model 'c'."
    assert miss.param == "body.model"
    assert miss.as_dict()["line"] == 2
    assert sorted(asked) == ["a-1", "a-2", "b", "c"]  # once per model name
    assert result.total == 8
    check_slices(path, result, 3)


def test_without_serves_every_model_passes(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(req("r1", "anything") + b"\n" + req("r2", "else") + b"\n")
    result = scan(path)
    assert result.errors == [] and result.model == "anything"
    result = scan_input(path, batch_id="batch_t", endpoint=CHAT, max_requests=100,
                        max_bytes=1 << 20, slice_lines=3, serves=lambda m: m == "else")
    assert [(e.code, e.line) for e in result.errors] == [(LineCodes.MODEL_NOT_FOUND, 1)]
