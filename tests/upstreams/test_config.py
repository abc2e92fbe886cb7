"""The upstreams config file (``--config barge.toml``): what it may hold, and a one-line
error naming the file, the upstream and the key for anything it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from barge.exceptions import BargeError
from barge.settings import Settings
from barge.upstreams.config import (
    UpstreamSpec,
    load_config,
    serves_any,
    single_upstream,
)

FULL = """
[[upstream]]
name = "gpu-a"
url = "http://10.0.0.1:8000/v1"
models = ["llama-*", "qwen-7b"]
api_key_env = "GPU_A_KEY"
concurrency = 64
tokens_per_minute = 200000
requests_per_minute = 600
weight = 2.5
model_alias = { "llama-70b" = "meta-llama/Llama-3-70B", "qwen-7b" = "Qwen/Qwen2-7B" }
priority_field = "priority"

[[upstream]]
name = "hosted"
url = "https://api.example.com/v1"
model_alias = "gpt-4o-mini"
weight = 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "barge.toml"
    path.write_text(text)
    return path


def one(url: str = "http://127.0.0.1:8000/v1", **keys: str) -> str:
    """An [[upstream]] table named 'u' with ``keys`` as raw TOML values."""
    lines = ["[[upstream]]", 'name = "u"', f'url = "{url}"']
    lines += [f"{k} = {v}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def refused(path: Path, *names: str) -> str:
    """load_config's error: one line naming the file and each of ``names``."""
    with pytest.raises(BargeError) as info:
        load_config(path)
    message = info.value.message
    assert "\n" not in message, message
    assert str(path) in message, message
    for name in names:
        assert name in message, (name, message)
    return message


def test_a_full_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_A_KEY", "sk-secret-a")
    a, hosted = load_config(write(tmp_path, FULL))
    assert a == UpstreamSpec(
        name="gpu-a", url="http://10.0.0.1:8000/v1", models=("llama-*", "qwen-7b"),
        api_key="sk-secret-a", concurrency=64, tokens_per_minute=200_000,
        requests_per_minute=600, weight=2.5,
        model_alias={"llama-70b": "meta-llama/Llama-3-70B", "qwen-7b": "Qwen/Qwen2-7B"},
        priority_field="priority",
    )
    assert "sk-secret-a" not in repr(a)
    assert hosted == UpstreamSpec(name="hosted", url="https://api.example.com/v1",
                                  model_alias="gpt-4o-mini")
    assert (hosted.models, hosted.api_key, hosted.concurrency, hosted.weight) == (
        ("*",), None, 128, 1.0)
    assert isinstance(hosted.weight, float)


def test_globs_and_serves_any(tmp_path: Path) -> None:
    specs = load_config(write(tmp_path, one(models='["a-*", "b"]')
                              + one(models='["c?"]').replace('"u"', '"v"')))
    assert [specs[0].serves(m) for m in ("a-1", "a-", "b", "bb", "A-1")] == [
        True, True, True, False, False]  # case matters
    assert serves_any(specs, "c1") and serves_any(specs, "a-x")
    assert not serves_any(specs, "c") and not serves_any(specs, "c12")
    assert not serves_any((), "a-1")


def test_model_alias_both_forms(tmp_path: Path) -> None:
    (one_name,) = load_config(write(tmp_path, one(model_alias='"served"')))
    assert one_name.outgoing_model("anything") == "served"
    (table,) = load_config(write(tmp_path, one(model_alias='{ "gpt-4o" = "llama-70b" }')))
    assert table.outgoing_model("gpt-4o") == "llama-70b"
    assert table.outgoing_model("other") == "other"
    (sub_table,) = load_config(write(tmp_path, one() + '[upstream.model_alias]\n"x" = "y"\n'))
    assert sub_table.model_alias == {"x": "y"}


def test_api_key_env_is_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, one(api_key_env='"MY_UPSTREAM_KEY"'))
    monkeypatch.setenv("MY_UPSTREAM_KEY", "sk-from-env")
    assert load_config(path)[0].api_key == "sk-from-env"
    for value in (None, ""):
        if value is None:
            monkeypatch.delenv("MY_UPSTREAM_KEY")
        else:
            monkeypatch.setenv("MY_UPSTREAM_KEY", value)
        message = refused(path, "'u'", "api_key_env", "MY_UPSTREAM_KEY")
        assert "not set or empty" in message


def test_a_literal_api_key_is_refused(tmp_path: Path) -> None:
    message = refused(write(tmp_path, one(api_key='"sk-literal-secret"')), "'u'", "'api_key'",
                      "api_key_env")
    assert "sk-literal-secret" not in message


@pytest.mark.parametrize(
    ("key", "value", "expects"),
    [
        ("concurrency", "0", "from 1 to 100000"),
        ("concurrency", '"8"', "integer"),
        ("concurrency", "1.5", "integer"),
        ("concurrency", "true", "integer"),
        ("concurrency", "100001", "100000"),
        ("tokens_per_minute", "0", "at least 1"),
        ("requests_per_minute", "-3", "at least 1"),
        ("requests_per_minute", '"many"', "integer"),
        ("weight", "0", "above 0"),
        ("weight", "-1.5", "above 0"),
        ("weight", "inf", "above 0"),
        ("weight", "nan", "above 0"),
        ("weight", '"2"', "number"),
        ("weight", "false", "number"),
        ("models", '"llama-*"', "list"),
        ("models", "[]", "non-empty list"),
        ("models", '["a", 3]', "list"),
        ("models", '[""]', "list"),
        ("model_alias", "3", "model name"),
        ("model_alias", '""', "model name"),
        ("model_alias", '{ "a" = 1 }', "table"),
        ("priority_field", "1", "string"),
        ("priority_field", '""', "string"),
        ("api_key_env", "1", "environment variable"),
        ("timeout", "3", "unknown"),
        ("coalesce", '"no"', "true or false"),
        ("coalesce", "0", "true or false"),
        ("coalesce_max_inputs", "0", "from 1 to 2048"),
        ("coalesce_max_inputs", "2049", "2048"),
        ("coalesce_max_tokens", "0", "at least 1"),
        ("coalesce_max_tokens", '"8k"', "integer"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_upstream_and_key(
    tmp_path: Path, key: str, value: str, expects: str
) -> None:
    refused(write(tmp_path, one(**{key: value})), "upstream 'u'", f"'{key}'", expects)


@pytest.mark.parametrize("url", ["ftp://gpu:8000/v1", "gpu:8000", "http://", "",
                                 "http://gpu:99999/v1"])
def test_a_url_that_is_not_http_is_refused(tmp_path: Path, url: str) -> None:
    refused(write(tmp_path, one(url=url)), "upstream 'u'", "'url'", "http")


def test_a_url_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    text = '[[upstream]]\nname = "u"\nurl = 8000\n'
    refused(write(tmp_path, text), "upstream 'u'", "'url'", "string")


def test_missing_name_or_url(tmp_path: Path) -> None:
    text = one() + '[[upstream]]\nurl = "http://127.0.0.1:1/v1"\n'
    refused(write(tmp_path, text), "upstream #2", "'name'", "missing")
    text = one() + '[[upstream]]\nname = 7\nurl = "http://127.0.0.1:1/v1"\n'
    refused(write(tmp_path, text), "upstream #2", "'name'", "string")
    refused(write(tmp_path, '[[upstream]]\nname = "u"\n'), "upstream 'u'", "'url'", "missing")


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    text = one() + one(url="http://127.0.0.1:9000/v1")
    refused(write(tmp_path, text), "upstream #2", "'name'", "'u'", "#1", "unique")


@pytest.mark.parametrize(
    ("text", "expects"),
    [
        ("", "no upstream"),
        ("# nothing but a comment\n", "no upstream"),
        ("upstream = []\n", "no upstream"),
        ('[upstream]\nname = "u"\nurl = "http://h/v1"\n', "[[upstream]]"),
        ("upstream = 3\n", "[[upstream]]"),
        ('[[upstreams]]\nname = "u"\n', "'upstreams'"),
        (one() + "[server]\nport = 1\n", "'server'"),
    ],
)
def test_a_file_without_upstream_tables_is_refused(
    tmp_path: Path, text: str, expects: str
) -> None:
    refused(write(tmp_path, text), expects)


def test_toml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    refused(write(tmp_path, one() + "concurrency = = 3\n"), "TOML", "line 4")
    refused(write(tmp_path, one() + 'name = "again"\n'), "TOML")  # a key given twice


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "missing.toml", "Cannot read")
    refused(tmp_path, "Cannot read")  # a directory
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'# caf\xe9\n' + one().encode())
    refused(path, "UTF-8")


def test_single_upstream_and_settings() -> None:
    spec = single_upstream("http://gpu:8000/v1", "sk-x", 32)
    assert spec == UpstreamSpec(name="default", url="http://gpu:8000/v1", models=("*",),
                                api_key="sk-x", concurrency=32)
    assert spec.serves("any-model")
    assert Settings(upstream="http://gpu:8000/v1", upstream_api_key="sk-x",
                    upstream_concurrency=32).upstream_specs == (spec,)
    listed = (UpstreamSpec(name="a", url="http://a/v1"),)
    assert Settings(upstreams=listed).upstream_specs == listed


def test_coalescing_is_on_by_default_and_set_per_upstream(tmp_path: Path) -> None:
    default = single_upstream("http://gpu:8000/v1", None, 8)
    assert (default.coalesce, default.coalesce_max_inputs, default.coalesce_max_tokens) == \
        (True, 64, 8192)
    text = one(coalesce="false") + one(coalesce_max_inputs="16", coalesce_max_tokens="300"
                                       ).replace('"u"', '"v"')
    off, small = load_config(write(tmp_path, text))
    assert off.coalesce is False and (off.coalesce_max_inputs, off.coalesce_max_tokens) == \
        (64, 8192)
    assert small.coalesce is True and (small.coalesce_max_inputs,
                                       small.coalesce_max_tokens) == (16, 300)
