"""Coalescing embeddings: request lines alike go to the upstream as one call.

An embeddings line costs an upstream little; the call around it costs most. Lines of one
batch with the same body but their ``input`` (model, ``encoding_format``,
``dimensions``, ``user`` …) are sent as one call whose ``input`` is their inputs one
after the other, and the answer is cut back into each line's own answer: its
embeddings (``index`` 0… again), every other member of the answer as it came, and its
share of the usage. Here are the pure parts; the worker pool forms the groups
(``WorkerPool._more_like``) and the dispatcher sends them (``Dispatcher.execute_group``).

- ``prepare`` reads a line for coalescing, or says it goes alone: an input that is not
  text (a string, or a list of strings) or token ids (a list of integers, or a list of
  such lists), an empty one, and a line with a number of 16 digits or more (its body is
  sent as its own text, see ``dispatch._request_body``) go alone.
- ``combined_body``: the first line's body with every line's inputs in order (a line
  whose input is a list has its items next to each other).
- ``split_answer``: each line's answer, cut from the call's answer as spans of its text
  (``domain.jsonspan``), never decoded and encoded again, so no number changes; ``None``
  when the answer cannot be cut (not one item per input with the indexes 0…n-1, an
  odd ``usage``): then the lines go one by one.
- Usage: every count in the call's ``usage`` (nested objects too) is split among the
  lines in proportion to their estimated tokens (``pacing.estimate_tokens``), as whole
  numbers that add up to the call's exactly (largest remainders; ties to the earlier
  line); anything else in it is copied to each line."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from barge.domain.jsonspan import elements, last_members
from barge.domain.usage import Usage, usage_of
from barge.engine.pacing import estimate_tokens

EMBEDDINGS = "/v1/embeddings"
TEXT, TOKENS = b"text", b"tokens"  # the two kinds of input, never mixed in one call
_USAGE_DEPTH = 8  # nesting of ``usage`` split; deeper values are copied

# As ``dispatch._request_body`` finds them: a run of 16 digits marks a number orjson may
# not read back exactly.
_DIGITS = bytes(0x30 if chr(b) in "0123456789." else 0x20 for b in range(256))
_LONG_RUN = b"0" * 16


@dataclass(frozen=True, slots=True)
class Item:
    """One embeddings request line, read for coalescing."""

    raw: bytes
    custom_id: str
    body: dict[str, Any]
    model: str
    key: bytes  # lines with the same key may share a call: the body but its input
    inputs: tuple[Any, ...]  # what it adds to the combined input, in order
    tokens: int  # its estimate, as pacing makes it


def _inputs(value: Any) -> tuple[bytes, tuple[Any, ...]] | None:
    """The kind of an ``input`` and its items in a combined input; None where it goes
    alone."""
    if isinstance(value, str):
        return (TEXT, (value,)) if value else None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(x, str) and x for x in value):
        return TEXT, tuple(value)
    if all(type(x) is int for x in value):
        return TOKENS, (value,)  # one input: a list of token ids
    if all(isinstance(x, list) and x and all(type(t) is int for t in x) for x in value):
        return TOKENS, tuple(value)
    return None


def prepare(raw: bytes) -> Item | None:
    """``raw`` (a validated embeddings line) read for coalescing, or None where it goes
    alone (see the module's docstring). Never raises."""
    if _LONG_RUN in raw.translate(_DIGITS):
        return None
    try:
        line = orjson.loads(raw)
        body = line["body"]
        custom_id = line["custom_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(body, dict) or not isinstance(custom_id, str):
        return None
    model = body.get("model")
    found = _inputs(body.get("input"))
    if not isinstance(model, str) or found is None:
        return None
    kind, inputs = found
    params = {k: v for k, v in body.items() if k != "input"}
    try:
        key = kind + b"\0" + orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return None
    return Item(raw, custom_id, body, model, key, inputs, estimate_tokens(EMBEDDINGS, body))


Q = TypeVar("Q")


def take_alike(queue: deque[Q], item: Item, item_of: Callable[[Q], Item | None], *,
               max_inputs: int, max_tokens: int, max_lines: int) -> list[Q]:
    """The requests of ``queue`` that go in one call with ``item`` (already taken),
    taken out of it in their order: alike (the same key; ``item_of`` reads a request,
    None where it goes alone), as many as fit in
    ``max_inputs`` inputs and ``max_tokens`` estimated tokens with ``item``'s, at most
    ``max_lines``. The others stay, in order; only the first ``4 * max_inputs`` are
    looked at, so a long queue of unlike requests is not searched whole."""
    inputs, tokens = len(item.inputs), item.tokens
    taken: list[Q] = []
    passed: list[Q] = []
    looks = 4 * max_inputs
    while (queue and looks and len(taken) < max_lines and inputs < max_inputs
           and tokens < max_tokens):
        looks -= 1
        queued = queue.popleft()
        other = item_of(queued)
        if (other is not None and other.key == item.key
                and inputs + len(other.inputs) <= max_inputs
                and tokens + other.tokens <= max_tokens):
            taken.append(queued)
            inputs += len(other.inputs)
            tokens += other.tokens
        else:
            passed.append(queued)
    queue.extendleft(reversed(passed))
    return taken


def combined_body(items: Sequence[Item], model: str, priority_field: str | None = None,
                  priority: int | None = None) -> bytes:
    """The body of one call for ``items`` (alike): the first one's, with every item's
    inputs in order, ``model`` as the upstream knows it and, with ``priority_field``,
    the request's rank in it."""
    body = dict(items[0].body)
    body["input"] = [x for item in items for x in item.inputs]
    if model != items[0].model:
        body["model"] = model
    if priority_field is not None:
        body[priority_field] = priority
    return orjson.dumps(body)


def shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (all equal where they add up to 0) as
    whole numbers adding up to ``total`` exactly: largest remainders, ties to the
    earlier."""
    n = len(weights)
    if n == 0:
        return []
    w = [max(0, x) for x in weights]
    whole = sum(w)
    if whole == 0:
        w, whole = [1] * n, n
    parts = [total * x // whole for x in w]
    left = total - sum(parts)
    for i in sorted(range(n), key=lambda i: (-(total * w[i] % whole), i))[:left]:
        parts[i] += 1
    return parts


def split_usage(usage: dict[str, Any], weights: Sequence[int],
                depth: int = 0) -> list[dict[str, Any]]:
    """Each line's ``usage``: counts (integers from 0) split by ``shares``, nested objects
    likewise, anything else copied."""
    out: list[dict[str, Any]] = [{} for _ in weights]
    for name, value in usage.items():
        parts: Sequence[Any]
        if type(value) is int and value >= 0:
            parts = shares(value, weights)
        elif isinstance(value, dict) and depth < _USAGE_DEPTH:
            parts = split_usage(value, weights, depth + 1)
        else:
            parts = [value] * len(weights)
        for line, part in zip(out, parts, strict=True):
            line[name] = part
    return out


def _index(text: bytes, n: int) -> int | None:
    """An ``index`` value's text as an index below ``n``: plain digits only."""
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0") or len(text) > 10:
        return None
    value = int(text)
    return value if value < n else None


def split_answer(data: bytes, parsed: Any,
                 items: Sequence[Item]) -> list[tuple[bytes, Usage]] | None:
    """Each item's answer (its body's bytes, and the usage they report), cut from the
    call's answer ``data`` (``parsed``: its value, already read); None when it cannot be
    cut: not an object whose ``data`` has one element per input with the indexes
    0…n-1 once each, or a ``usage`` that is not an object."""
    if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), list):
        return None
    n = sum(len(item.inputs) for item in items)
    usage = parsed.get("usage")
    if len(parsed["data"]) != n or ("usage" in parsed and not isinstance(usage, dict)):
        return None
    try:
        top = last_members(data, 0)
        data_start, data_end = top["data"]
        spans = elements(data, data_start)
        if len(spans) != n:
            return None
        # Each element's span and its index value's span, by index.
        by_index: list[tuple[int, int, int, int] | None] = [None] * n
        for start, end in spans:
            found = last_members(data, start).get("index")
            if found is None:
                return None
            index = _index(data[found[0]:found[1]], n)
            if index is None or by_index[index] is not None:
                return None
            by_index[index] = (start, end, *found)
        usages: list[dict[str, Any]] | None = None
        usage_texts: list[bytes] = []
        if isinstance(usage, dict):
            usages = split_usage(usage, [item.tokens for item in items])
            usage_texts = [orjson.dumps(u) for u in usages]
    except (ValueError, KeyError, IndexError, RecursionError, orjson.JSONEncodeError):
        return None
    # The array's own spacing, as the upstream wrote it.
    opening = data[data_start + 1:spans[0][0]]
    between = data[spans[0][1]:spans[1][0]] if len(spans) > 1 else b","
    closing = data[spans[-1][1]:data_end - 1]
    out: list[tuple[bytes, Usage]] = []
    first = 0
    for k, item in enumerate(items):
        pieces = []
        for j in range(len(item.inputs)):
            span = by_index[first + j]
            assert span is not None  # every index 0…n-1 was found once
            start, end, index_start, index_end = span
            pieces.append(data[start:index_start] + str(j).encode() + data[index_end:end])
        first += len(item.inputs)
        cuts = [(data_start, data_end, b"[" + opening + between.join(pieces) + closing + b"]")]
        line_usage = Usage()
        if usages is not None:
            cuts.append((*top["usage"], usage_texts[k]))
            line_usage = usage_of({"usage": usages[k]})
        out.append((_splice(data, cuts), line_usage))
    return out


def _splice(data: bytes, cuts: list[tuple[int, int, bytes]]) -> bytes:
    """``data`` with each ``(start, end)`` span (none overlapping) replaced."""
    pieces: list[bytes] = []
    at = 0
    for start, end, text in sorted(cuts):
        pieces += (data[at:start], text)
        at = end
    pieces.append(data[at:])
    return b"".join(pieces)
