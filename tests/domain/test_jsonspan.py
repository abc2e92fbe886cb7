"""Finding members and elements in a JSON text as spans of its bytes."""

from __future__ import annotations

import json

import pytest

from barge.domain.jsonspan import elements, last_members, members, value_end


def texts(data: bytes, spans: list[tuple[int, int]]) -> list[bytes]:
    return [data[s:e] for s, e in spans]


def test_members_of_an_object_with_nested_values_and_tricky_strings() -> None:
    data = (b' { "a" : [1, {"b": "]}"}, "\\"[{"] ,"k\\u00e9y":"x\\\\",'
            b'"n":-1.5e+3,"t":true,"z":null,"e":{},"l":[] } ')
    found = members(data, 0)
    assert [name for name, _, _ in found] == ["a", "k\u00e9y", "n", "t", "z", "e", "l"]
    values = [data[s:e] for _, s, e in found]
    assert values == [b'[1, {"b": "]}"}, "\\"[{"]', b'"x\\\\"', b"-1.5e+3", b"true", b"null",
                      b"{}", b"[]"]
    for value in values:  # each span is one whole JSON value
        json.loads(value)


def test_elements_keep_the_digits_as_written() -> None:
    data = b'[0.12345678901234567890123456789, -0.5e-07 , "s,]", [1,[2]],{"x":[]}]'
    assert texts(data, elements(data, 0)) == [
        b"0.12345678901234567890123456789", b"-0.5e-07", b'"s,]"', b"[1,[2]]", b'{"x":[]}']
    assert elements(b"[ ]", 0) == []
    assert members(b"{ }", 0) == []


def test_the_last_of_a_repeated_name_wins() -> None:
    data = b'{"data": 1, "data": [2]}'
    start, end = last_members(data, 0)["data"]
    assert data[start:end] == b"[2]"


def test_value_end_of_a_string_with_escaped_backslashes() -> None:
    data = b'"a\\\\" , "b"'
    assert data[:value_end(data, 0)] == b'"a\\\\"'


@pytest.mark.parametrize("data", [b"[1, 2", b'{"a" 1}', b'{"a": 1 "b": 2}', b'"open',
                                  b"[1 2]", b"3", b"{1: 2}", b'{"a":}'])
def test_what_cannot_be_read_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        if data.startswith(b"["):
            elements(data, 0)
        else:
            members(data, 0)
