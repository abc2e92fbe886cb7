"""Where values lie in a JSON text, found without decoding them.

Barge copies an upstream's answer into a result line byte for byte (``json_fragment``):
decoding and encoding again would change numbers a double cannot hold (integers past 64
bits, decimals longer than 17 digits). To cut one answer into several (a coalesced
embeddings call, ``engine.coalesce``), the pieces are taken as spans of the original
text: these functions find the members of an object and the elements of an array, as
``(start, end)`` offsets into the bytes. Strings and nested values are skipped with
regular expressions (C speed: an embedding of 1,536 numbers is one search).

They expect a valid JSON text (the caller has parsed it once already) and raise
``ValueError`` on what they cannot read; they do not check everything a parser would."""

from __future__ import annotations

import json
import re

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_STRING_STOP = re.compile(rb'["\\]')  # the end of a string, or an escape in it
_NESTED_STOP = re.compile(rb'["\[\]{}]')  # what changes the depth (or starts a string)
_SCALAR_END = re.compile(rb"[,\]} \t\n\r]")
_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPENERS = frozenset(b"[{")


def skip_whitespace(data: bytes, i: int) -> int:
    match = _WHITESPACE.match(data, i)
    return i if match is None else match.end()


def string_end(data: bytes, i: int) -> int:
    """The offset just past the string that starts (with its quote) at ``i``."""
    j = i + 1
    while True:
        match = _STRING_STOP.search(data, j)
        if match is None:
            raise ValueError("a string does not end")
        if data[match.start()] == _BACKSLASH:
            j = match.start() + 2  # the escaped character (\" \\ \uXXXX ...) is skipped
            continue
        return match.end()


def value_end(data: bytes, i: int) -> int:
    """The offset just past the value that starts at ``i``."""
    if i >= len(data):
        raise ValueError("a value is missing")
    first = data[i]
    if first == _QUOTE:
        return string_end(data, i)
    if first in _OPENERS:
        depth = 0
        j = i
        while True:
            match = _NESTED_STOP.search(data, j)
            if match is None:
                raise ValueError("an array or object does not end")
            k = match.start()
            if data[k] == _QUOTE:
                j = string_end(data, k)
                continue
            j = k + 1
            if data[k] in _OPENERS:
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return j
    match = _SCALAR_END.search(data, i)
    end = len(data) if match is None else match.start()
    if end == i:
        raise ValueError("a value is missing")
    return end


def members(data: bytes, start: int) -> list[tuple[str, int, int]]:
    """``(name, value start, value end)`` of each member of the object at ``start`` (after
    any whitespace), in the order of the text; a name may come more than once."""
    i = skip_whitespace(data, start)
    if data[i:i + 1] != b"{":
        raise ValueError("not an object")
    found: list[tuple[str, int, int]] = []
    i = skip_whitespace(data, i + 1)
    if data[i:i + 1] == b"}":
        return found
    while True:
        if data[i:i + 1] != b'"':
            raise ValueError("a member has no name")
        name_end = string_end(data, i)
        name = json.loads(data[i:name_end])
        i = skip_whitespace(data, name_end)
        if data[i:i + 1] != b":":
            raise ValueError("a member has no colon")
        value_start = skip_whitespace(data, i + 1)
        end = value_end(data, value_start)
        found.append((name, value_start, end))
        i = skip_whitespace(data, end)
        sep = data[i:i + 1]
        if sep == b"}":
            return found
        if sep != b",":
            raise ValueError("members are not separated by commas")
        i = skip_whitespace(data, i + 1)


def elements(data: bytes, start: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each element of the array at ``start`` (after any whitespace)."""
    i = skip_whitespace(data, start)
    if data[i:i + 1] != b"[":
        raise ValueError("not an array")
    found: list[tuple[int, int]] = []
    i = skip_whitespace(data, i + 1)
    if data[i:i + 1] == b"]":
        return found
    while True:
        end = value_end(data, i)
        found.append((i, end))
        i = skip_whitespace(data, end)
        sep = data[i:i + 1]
        if sep == b"]":
            return found
        if sep != b",":
            raise ValueError("elements are not separated by commas")
        i = skip_whitespace(data, i + 1)


def last_members(data: bytes, start: int) -> dict[str, tuple[int, int]]:
    """The value span of each member name of the object at ``start``; where a name comes
    more than once, its last value (as parsers keep)."""
    return {name: (s, e) for name, s, e in members(data, start)}
