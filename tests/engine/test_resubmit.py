"""The retry's input file on real local disk: the input lines whose custom_id has no output
line, byte for byte and in input order, custom_ids found however they are spelled."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from barge.domain.results import error_line, output_line
from barge.engine.resubmit import failed_requests, output_custom_id

ODD_IDS = ["plain", 'with "quotes"', "back\\slash\\", "\\\"", "é-ü ☃", "tab\tnew\nline",
           '","custom_id":"x', "\u2028", "0"]


def request(custom_id: str, n: int) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                         "body": {"model": "m", "input": f"text {n}"}})


@pytest.mark.parametrize("custom_id", ODD_IDS)
def test_the_custom_id_of_an_output_line(custom_id: str) -> None:
    key = orjson.dumps(custom_id)
    assert output_custom_id(output_line(custom_id, 200, "req_1", {"a": '"custom_id"'})) == key
    assert output_custom_id(error_line(custom_id, "batch_expired", "late")) == key
    # a line spelled otherwise (keys in another order, escapes) is parsed whole
    other = b'{"custom_id": ' + orjson.dumps(custom_id).replace(b"\\\\", b"\\u005c") + b"}"
    assert output_custom_id(other) == key


def test_only_the_lines_without_an_output_line_are_kept(tmp_path: Path) -> None:
    lines = [request(c, i) for i, c in enumerate(ODD_IDS)]
    # a BOM, a blank line, CRLF, odd spacing and no final newline: kept as they are
    raw = (b"\xef\xbb\xbf" + lines[0] + b"\n\n" + lines[1] + b"\r\n"
           + lines[2].replace(b'","', b'" , "') + b"\n" + b"\n".join(lines[3:]))
    src = tmp_path / "in.jsonl"
    src.write_bytes(raw)
    succeeded = {0, 2, 5, 6}
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(output_line(ODD_IDS[i], 200, "r", {}) + b"\n"
                             for i in sorted(succeeded, reverse=True)))
    dest = tmp_path / "retry.jsonl"
    got = failed_requests(src, out, dest, tmp_path / "scratch")
    kept = [line for line in raw.splitlines(keepends=True) if line.strip()]
    kept[0] = kept[0][3:]  # the byte-order mark belongs to the file, not to its line
    expected = b"".join(line for i, line in enumerate(kept) if i not in succeeded)
    assert dest.read_bytes() == expected
    assert expected.endswith(lines[-1])  # the last line, still without its newline
    assert (got.bytes, got.lines) == (len(expected), len(ODD_IDS) - len(succeeded))
    assert got.sha256 == hashlib.sha256(expected).hexdigest()
    assert list((tmp_path / "scratch").iterdir()) == []  # the scratch file is gone
    # no output file: every request; every request succeeded: none
    assert failed_requests(src, None, dest, tmp_path).lines == len(ODD_IDS)
    out.write_bytes(b"".join(output_line(c, 200, "r", {}) + b"\n" for c in ODD_IDS))
    assert failed_requests(src, out, dest, tmp_path).lines == 0
    assert dest.read_bytes() == b""


def test_many_requests_in_chunks(tmp_path: Path) -> None:
    n = 12_345
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(request(f"c-{i}", i) + b"\n" for i in range(n)))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(output_line(f"c-{i}", 200, "r", {}) + b"\n"
                             for i in range(n) if i % 7))
    got = failed_requests(src, out, tmp_path / "retry.jsonl", tmp_path)
    assert got.lines == len(range(0, n, 7))
    ids = [orjson.loads(line)["custom_id"]
           for line in (tmp_path / "retry.jsonl").read_bytes().splitlines()]
    assert ids == [f"c-{i}" for i in range(0, n, 7)]
