"""Upstreams: where requests go. One ``UpstreamSpec`` per server (or hosted provider),
each serving some models, under its own limits. ``--config barge.toml`` lists them; the
single ``--upstream`` flag is a config of one upstream serving every model."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from barge.exceptions import BargeError


@dataclass(frozen=True)
class UpstreamSpec:
    name: str
    url: str  # base URL, ending in /v1
    models: tuple[str, ...] = ("*",)  # glob patterns of the models it serves
    api_key: str | None = field(default=None, repr=False)  # from api_key_env, never a file
    concurrency: int = 128  # ceiling of its AIMD limit
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None
    weight: float = 1.0  # share of the load among replicas of a model
    # Rewrites ``model`` on the way out: one name for every request, or a table from
    # the name a batch uses to the one this upstream knows.
    model_alias: str | dict[str, str] | None = None
    priority_field: str | None = None  # body field that gets the request's deadline rank
    # Embeddings: lines alike (the same body but ``input``) go in one call, at most this
    # many inputs and this many estimated tokens in it (see ``engine.coalesce``).
    coalesce: bool = True
    coalesce_max_inputs: int = 64
    coalesce_max_tokens: int = 8192

    def serves(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def outgoing_model(self, model: str) -> str:
        """The model name this upstream is sent for a request naming ``model``."""
        alias = self.model_alias
        if alias is None:
            return model
        if isinstance(alias, str):
            return alias
        return alias.get(model, model)


# -- the config file -----------------------------------------------------------------------

MAX_CONCURRENCY = 100_000  # as --upstream-concurrency allows
_KNOWN_KEYS = (
    "name", "url", "models", "api_key_env", "concurrency", "tokens_per_minute",
    "requests_per_minute", "weight", "model_alias", "priority_field", "coalesce",
    "coalesce_max_inputs", "coalesce_max_tokens",
)
MAX_COALESCE_INPUTS = 2048  # as OpenAI's embeddings endpoint takes at most


def single_upstream(url: str, api_key: str | None, concurrency: int) -> UpstreamSpec:
    """The one upstream of ``--upstream``: it serves every model."""
    return UpstreamSpec(name="default", url=url, models=("*",), api_key=api_key,
                        concurrency=concurrency)


def serves_any(specs: Iterable[UpstreamSpec], model: str) -> bool:
    """Whether some upstream of ``specs`` serves ``model``."""
    return any(spec.serves(model) for spec in specs)


def load_config(path: Path) -> tuple[UpstreamSpec, ...]:
    """The upstreams a TOML file lists, one ``[[upstream]]`` table each; BargeError with
    one line naming the file, the upstream and the key for anything wrong in it. Keys
    never come from the file itself: ``api_key_env`` names the variable holding one."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as e:
        raise BargeError(f"Cannot read the config file {path}: "
                         f"{e.strerror or e}.") from None
    except UnicodeDecodeError:
        raise BargeError(f"{path}: the config file is not UTF-8 text.") from None
    except tomllib.TOMLDecodeError as e:
        raise BargeError(f"{path}: not valid TOML: {e}.") from None
    extra = sorted(k for k in doc if k != "upstream")
    if extra:
        raise BargeError(f"{path}: unknown top-level key {extra[0]!r}; the file holds only "
                         "[[upstream]] tables.")
    tables = doc.get("upstream")
    if tables is None:
        raise BargeError(f"{path}: no upstream: list each one in an [[upstream]] table "
                         "with at least name and url.")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise BargeError(f"{path}: 'upstream' must be [[upstream]] tables (double "
                         "brackets), one per upstream.")
    if not tables:
        raise BargeError(f"{path}: no upstream: list each one in an [[upstream]] table.")
    specs: list[UpstreamSpec] = []
    first_index: dict[str, int] = {}
    for index, table in enumerate(tables, 1):
        spec = _parse_upstream(path, index, table)
        if spec.name in first_index:
            raise BargeError(f"{path}: upstream #{index}: key 'name': {spec.name!r} is "
                             f"already the name of upstream #{first_index[spec.name]}; "
                             "names must be unique.")
        first_index[spec.name] = index
        specs.append(spec)
    return tuple(specs)


def _parse_upstream(path: Path, index: int, table: dict[str, Any]) -> UpstreamSpec:
    where = f"{path}: upstream #{index}"

    def bad(key: str, problem: str) -> BargeError:
        return BargeError(f"{where}: key {key!r} {problem}.")

    name = table.get("name")
    if name is None:
        raise bad("name", "is missing; every upstream needs a unique name")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", f"must be a non-empty string; got {_shown(name)}")
    where = f"{path}: upstream {name!r}"
    if "api_key" in table:
        raise bad("api_key", "is not allowed: keys stay out of config files; put the key in "
                  "an environment variable and name it with api_key_env = \"VARIABLE\"")
    unknown = sorted(k for k in table if k not in _KNOWN_KEYS)
    if unknown:
        raise bad(unknown[0], f"is unknown; known keys: {', '.join(_KNOWN_KEYS)}")

    url = table.get("url")
    if url is None:
        raise bad("url", "is missing; give the base URL, like http://127.0.0.1:8000/v1")
    if not isinstance(url, str):
        raise bad("url", f"must be a string; got {_shown(url)}")
    from barge.startup import check_upstream  # here: startup imports the settings

    check_upstream(url, what=f"{where}: key 'url'")

    models: tuple[str, ...] = ("*",)
    if "models" in table:
        value = table["models"]
        if (not isinstance(value, list) or not value
                or not all(isinstance(m, str) and m for m in value)):
            raise bad("models", "must be a non-empty list of model names or globs, like "
                      f"[\"llama-*\", \"qwen\"]; got {_shown(value)}")
        models = tuple(value)

    api_key = None
    if "api_key_env" in table:
        variable = table["api_key_env"]
        if not isinstance(variable, str) or not variable:
            raise bad("api_key_env", "must be the name of an environment variable; got "
                      f"{_shown(variable)}")
        api_key = os.environ.get(variable)
        if not api_key:
            raise bad("api_key_env", f"names the environment variable {variable}, which is "
                      "not set or empty")

    alias = table.get("model_alias")
    if alias is not None and not (
        (isinstance(alias, str) and alias)
        or (isinstance(alias, dict)
            and all(isinstance(v, str) and v for v in alias.values()))
    ):
        raise bad("model_alias", "must be a model name or a table of model names, like "
                  f"{{\"gpt-4o\" = \"llama-70b\"}}; got {_shown(alias)}")

    priority_field = table.get("priority_field")
    if priority_field is not None and not (isinstance(priority_field, str) and priority_field):
        raise bad("priority_field", f"must be a non-empty string; got {_shown(priority_field)}")

    coalesce = table.get("coalesce", True)
    if not isinstance(coalesce, bool):
        raise bad("coalesce", f"must be true or false; got {_shown(coalesce)}")

    weight = table.get("weight", 1.0)
    if (isinstance(weight, bool) or not isinstance(weight, int | float)
            or not math.isfinite(weight) or weight <= 0):
        raise bad("weight", f"must be a number above 0; got {_shown(weight)}")

    return UpstreamSpec(
        name=name,
        url=url,
        models=models,
        api_key=api_key,
        concurrency=_positive(table, "concurrency", bad, most=MAX_CONCURRENCY) or 128,
        tokens_per_minute=_positive(table, "tokens_per_minute", bad),
        requests_per_minute=_positive(table, "requests_per_minute", bad),
        weight=float(weight),
        model_alias=dict(alias) if isinstance(alias, dict) else alias,
        priority_field=priority_field,
        coalesce=coalesce,
        coalesce_max_inputs=_positive(table, "coalesce_max_inputs", bad,
                                      most=MAX_COALESCE_INPUTS) or 64,
        coalesce_max_tokens=_positive(table, "coalesce_max_tokens", bad) or 8192,
    )


def _positive(table: dict[str, Any], key: str, bad: Callable[[str, str], BargeError], *,
              most: int | None = None) -> int | None:
    """The integer ``table[key]``, at least 1 (and at most ``most``); None when absent."""
    if key not in table:
        return None
    value = table[key]
    if (isinstance(value, bool) or not isinstance(value, int) or value < 1
            or (most is not None and value > most)):
        bounds = f"from 1 to {most}" if most is not None else "of at least 1"
        raise bad(key, f"must be an integer {bounds}; got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A wrong value as the message shows it: TOML-ish, one line, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."
