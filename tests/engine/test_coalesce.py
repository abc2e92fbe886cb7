"""The pure parts of embeddings coalescing: which lines are alike, how a group is taken
from a queue, the combined body, and cutting the answer back into each line's own."""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from upstream import hash_embeddings

from barge.domain.usage import Usage
from barge.engine.coalesce import (
    Item,
    combined_body,
    prepare,
    shares,
    split_answer,
    split_usage,
    take_alike,
)
from barge.engine.router import Route, Router
from barge.upstreams.client import UpstreamClient
from barge.upstreams.config import UpstreamSpec


def raw(custom_id: str = "c", **body: Any) -> bytes:
    body.setdefault("model", "m")
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                         "body": body})


def item(custom_id: str = "c", **body: Any) -> Item:
    got = prepare(raw(custom_id, **body))
    assert got is not None
    return got


# -- which lines are alike ---------------------------------------------------------------


def test_the_key_is_the_body_but_its_input_whatever_the_order() -> None:
    a = item(input="x", encoding_format="float", dimensions=8, user="u")
    b = prepare(orjson.dumps({"custom_id": "b", "body": {
        "user": "u", "input": ["y", "z"], "dimensions": 8, "model": "m",
        "encoding_format": "float"}}))
    assert b is not None and a.key == b.key
    assert a.inputs == ("x",) and b.inputs == ("y", "z")
    for other in (item(input="x", dimensions=9), item(input="x", model="n"),
                  item(input="x", encoding_format="base64"), item(input="x", user="v"),
                  item(input=[1, 2])):
        assert other.key != a.key


def test_token_inputs_are_one_input_per_list_and_never_mixed_with_text() -> None:
    one, many = item(input=[1, 2, 3]), item(input=[[1], [2, 3]])
    assert one.inputs == ([1, 2, 3],) and many.inputs == ([1], [2, 3])
    assert one.key == many.key != item(input="x").key
    assert one.tokens == 3  # as pacing estimates: one token an id


@pytest.mark.parametrize("body", [
    {"input": ""}, {"input": []}, {"input": ["a", ""]}, {"input": ["a", 1]},
    {"input": [[1], "a"]}, {"input": [[]]}, {"input": [True]}, {"input": {"x": 1}},
    {"input": None}, {"model": 3, "input": "x"}, {"input": "x", "dimensions": 12345678901234567},
    {"input": "0.12345678901234567"},
])
def test_lines_that_go_alone(body: dict[str, Any]) -> None:
    assert prepare(raw(**body)) is None


def test_unreadable_lines_go_alone() -> None:
    assert prepare(b"not json") is None
    assert prepare(b'{"custom_id": "c"}') is None
    assert prepare(b'{"custom_id": 1, "body": {"model": "m", "input": "x"}}') is None


# -- taking a group ------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    name: str
    item: Item | None


def item_of(q: Queued) -> Item | None:
    return q.item


def queue(*items: tuple[str, Item | None]) -> deque[Queued]:
    return deque(Queued(name, it) for name, it in items)


def test_take_alike_takes_alike_in_order_and_leaves_the_rest_in_order() -> None:
    first = item(input="a")
    q = queue(("b", item(input="b")), ("other", item(input="o", user="u")),
              ("alone", None), ("c", item(input=["c1", "c2"])), ("d", item(input="d")))
    taken = take_alike(q, first, item_of, max_inputs=4, max_tokens=100, max_lines=10)
    assert [x.name for x in taken] == ["b", "c"]  # a, b, c1, c2: four inputs
    assert [x.name for x in q] == ["other", "alone", "d"]


def test_take_alike_keeps_to_tokens_and_lines_and_skips_what_does_not_fit() -> None:
    first = item(input="a" * 40)  # 10 tokens
    q = queue(("big", item(input="b" * 40)), ("small", item(input="s")),
              ("small2", item(input="t")))
    assert [x.name for x in take_alike(q, first, item_of, max_inputs=64, max_tokens=12,
                                       max_lines=10)] == ["small", "small2"]
    assert [x.name for x in q] == ["big"]
    q = queue(*((str(i), item(input=str(i))) for i in range(10)))
    assert len(take_alike(q, item(input="x"), item_of, max_inputs=64, max_tokens=100,
                          max_lines=3)) == 3
    assert [x.name for x in q] == [str(i) for i in range(3, 10)]


def test_take_alike_looks_at_a_bounded_part_of_a_long_queue() -> None:
    q = queue(*((f"u{i}", item(input="u", user=str(i))) for i in range(50)),
              ("far", item(input="x")))
    assert take_alike(q, item(input="y"), item_of, max_inputs=4, max_tokens=100,
                      max_lines=4) == []
    assert len(q) == 51 and q[-1].name == "far"


# -- the combined body ---------------------------------------------------------------------


def test_combined_body_keeps_params_and_order_and_renames_the_model() -> None:
    items = [item(input="a", dimensions=8), item(input=["b", "c"], dimensions=8)]
    assert orjson.loads(combined_body(items, "m")) == {"model": "m", "input": ["a", "b", "c"],
                                                       "dimensions": 8}
    renamed = orjson.loads(combined_body(items, "real-name", "priority", 7))
    assert renamed["model"] == "real-name" and renamed["priority"] == 7
    tokens = [item(input=[1, 2]), item(input=[[3], [4, 5]])]
    assert orjson.loads(combined_body(tokens, "m"))["input"] == [[1, 2], [3], [4, 5]]


# -- usage shares ----------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "weights", "expected"), [
    (10, [1, 1], [5, 5]),
    (10, [1, 2, 2], [2, 4, 4]),
    (7, [1, 1, 1], [3, 2, 2]),  # ties go to the earlier
    (5, [0, 0], [3, 2]),
    (0, [3, 4], [0, 0]),
    (2**70 + 1, [1, 1], [2**69 + 1, 2**69]),
    (3, [], []),
])
def test_shares_add_up_exactly(total: int, weights: list[int], expected: list[int]) -> None:
    assert shares(total, weights) == expected


def test_shares_are_proportional_and_exact_on_random_cases() -> None:
    rng = random.Random(3)
    for _ in range(500):
        weights = [rng.randrange(0, 50) for _ in range(rng.randrange(1, 70))]
        total = rng.randrange(0, 10**6)
        parts = shares(total, weights)
        assert sum(parts) == total and min(parts) >= 0
        whole = sum(weights) or len(weights)
        for part, w in zip(parts, weights if sum(weights) else [1] * len(weights),
                           strict=True):
            assert abs(part - total * w / whole) < 1


def test_split_usage_splits_counts_and_copies_the_rest() -> None:
    usage = {"prompt_tokens": 10, "total_tokens": 10, "cost": 0.5, "note": "x",
             "prompt_tokens_details": {"cached_tokens": 4}, "odd": -3}
    assert split_usage(usage, [1, 4]) == [
        {"prompt_tokens": 2, "total_tokens": 2, "cost": 0.5, "note": "x",
         "prompt_tokens_details": {"cached_tokens": 1}, "odd": -3},
        {"prompt_tokens": 8, "total_tokens": 8, "cost": 0.5, "note": "x",
         "prompt_tokens_details": {"cached_tokens": 3}, "odd": -3},
    ]


# -- cutting the answer ----------------------------------------------------------------------

DIMS = 4


def answer(items: list[Item]) -> bytes:
    body = orjson.loads(combined_body(items, items[0].model))
    return orjson.dumps(hash_embeddings(body, DIMS))


def alone(it: Item) -> bytes:
    return orjson.dumps(hash_embeddings(it.body, DIMS))


def cut(data: bytes, items: list[Item]) -> list[tuple[bytes, Usage]] | None:
    return split_answer(data, json.loads(data), items)


GROUP = [item("a", input="first one"), item("b", input=["x", "yy", "zzz zzz"]),
         item("c", input="c" * 30)]


def test_each_line_gets_its_own_calls_answer_byte_for_byte_but_usage() -> None:
    data = answer(GROUP)
    pieces = cut(data, GROUP)
    assert pieces is not None
    total = orjson.loads(data)["usage"]["prompt_tokens"]
    for (text, usage), it in zip(pieces, GROUP, strict=True):
        own = orjson.loads(alone(it))
        del own["usage"]
        got = orjson.loads(text)
        assert got.pop("usage") == {"prompt_tokens": usage.input_tokens,
                                    "total_tokens": usage.input_tokens}
        assert text.replace(orjson.dumps(orjson.loads(text)["usage"]), b"") == \
            alone(it).replace(orjson.dumps(orjson.loads(alone(it))["usage"]), b"")
        assert got == own
    assert sum(u.input_tokens for _, u in pieces) == total
    # In proportion to the estimates (3, 4 and 8 tokens).
    assert [u.input_tokens for _, u in pieces] == shares(total, [it.tokens for it in GROUP])


def test_the_upstreams_spacing_order_and_other_members_are_kept() -> None:
    parsed = orjson.loads(answer(GROUP))
    parsed["data"].reverse()  # the indexes say which is which
    parsed["id"] = "emb-123"
    data = json.dumps(parsed, indent=2).encode()  # pretty, and numbers as written
    pieces = cut(data, GROUP)
    assert pieces is not None
    text = pieces[1][0]
    assert b'\n  "id": "emb-123"' in text and b'"object": "list"' in text
    got = json.loads(text)
    assert [d["index"] for d in got["data"]] == [0, 1, 2]
    assert [d["embedding"] for d in got["data"]] == \
        [d["embedding"] for d in orjson.loads(alone(GROUP[1]))["data"]]


def test_numbers_are_never_decoded_on_the_way() -> None:
    digits = "0.123456789012345678901234567890123"
    data = (b'{"object":"list","data":[{"object":"embedding","index":1,"embedding":['
            + digits.encode() + b']},{"object":"embedding","index":0,"embedding":'
            b'[1e400, 18446744073709551616]}],"model":"m",'
            b'"usage":{"prompt_tokens":2,"total_tokens":2}}')
    pieces = cut(data, [item("a", input="x"), item("b", input="y")])
    assert pieces is not None
    assert b"[1e400, 18446744073709551616]" in pieces[0][0]
    assert b'"index":0,"embedding":[%s]' % digits.encode() in pieces[1][0]


def test_base64_embeddings_are_cut_the_same_way() -> None:
    items = [item("a", input="p", encoding_format="base64"),
             item("b", input=["q", "r"], encoding_format="base64")]
    pieces = cut(answer(items), items)
    assert pieces is not None
    for (text, _), it in zip(pieces, items, strict=True):
        assert orjson.loads(text)["data"] == orjson.loads(alone(it))["data"]


def test_an_answer_without_usage_gives_lines_without_usage() -> None:
    parsed = orjson.loads(answer(GROUP))
    del parsed["usage"]
    pieces = cut(orjson.dumps(parsed), GROUP)
    assert pieces is not None
    assert all("usage" not in orjson.loads(t) and not u for t, u in pieces)


def _broken(change: Any) -> bytes:
    parsed = orjson.loads(answer(GROUP))
    change(parsed)
    return orjson.dumps(parsed)


@pytest.mark.parametrize("data", [
    _broken(lambda p: p["data"].pop()),  # one embedding fewer than inputs
    _broken(lambda p: p["data"].append(dict(p["data"][0]))),  # one more
    _broken(lambda p: p["data"][1].update(index=0)),  # an index twice
    _broken(lambda p: p["data"][1].update(index=9)),  # past the end
    _broken(lambda p: p["data"][1].update(index="1")),  # not a number
    _broken(lambda p: p["data"][1].pop("index")),
    _broken(lambda p: p.update(usage=[1])),
    _broken(lambda p: p.update(data={"0": 1})),
    b'[1, 2]',
    _broken(lambda p: p["data"][1].update(index=1.0)),
])
def test_answers_that_cannot_be_cut(data: bytes) -> None:
    assert cut(data, GROUP) is None


def test_an_index_written_with_a_leading_zero_cannot_be_cut() -> None:
    data = answer(GROUP).replace(b'"index":1', b'"index":01')
    assert split_answer(data, orjson.loads(answer(GROUP)), GROUP) is None


# -- the limits of a model's upstreams -------------------------------------------------------


def test_a_model_coalesces_within_the_least_limits_of_all_its_upstreams() -> None:
    def route(name: str, models: tuple[str, ...], **spec: Any) -> Route:
        client = UpstreamClient("http://127.0.0.1:9/v1", api_key=None, timeout=1.0,
                                max_connections=8)
        return Route(UpstreamSpec(name, "http://127.0.0.1:9/v1", models=models, **spec),
                     client)

    router = Router([
        route("a", ("emb-*",), coalesce_max_inputs=32),
        route("b", ("emb-1",), coalesce_max_tokens=500),
        route("c", ("emb-2", "other"), coalesce=False),
        route("d", ("big",), coalesce_max_inputs=256),
    ])
    assert router.coalescing("emb-1") == (32, 500)  # a or b may get the call
    assert router.coalescing("emb-3") == (32, 8192)
    assert router.coalescing("emb-2") is None  # c may get it, and c does not coalesce
    assert router.coalescing("nobody") is None
    assert router.coalesce_size == 256
    off = Router([route("x", ("*",), coalesce=False)])
    assert off.coalesce_size == 0 and off.coalescing("m") is None
