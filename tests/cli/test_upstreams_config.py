"""``barge serve --config FILE``: the upstreams a TOML file lists. A batch naming a model
none of them serves fails validation, its lines named, and nothing is sent; a config file
that cannot be used stops the start with one line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api.support import chat_body, request_line, run_batch
from barge_process import ADMIN_KEY, BargeProcess, clean_env, free_port
from upstream import UpstreamServer


@pytest.fixture
def two_upstreams() -> Iterator[tuple[UpstreamServer, UpstreamServer]]:
    with UpstreamServer.in_thread() as a, UpstreamServer.in_thread() as b:
        yield a, b


def write_config(tmp_path: Path, a: UpstreamServer, b: UpstreamServer) -> Path:
    path = tmp_path / "barge.toml"
    path.write_text(
        f'[[upstream]]\nname = "up-a"\nurl = "{a.base_url}"\nmodels = ["a-*"]\n'
        f'concurrency = 4\n\n'
        f'[[upstream]]\nname = "up-b"\nurl = "{b.base_url}"\nmodels = ["b"]\n'
        f'api_key_env = "UP_B_KEY"\n'
    )
    return path


def test_a_model_no_upstream_serves_fails_the_batch_with_its_lines(
    tmp_path: Path, barge_factory: Callable[..., BargeProcess],
    two_upstreams: tuple[UpstreamServer, UpstreamServer],
) -> None:
    a, b = two_upstreams
    config = write_config(tmp_path, a, b)
    # barge_factory gives --upstream as well: --config wins, with a warning.
    barge = barge_factory(a.base_url, "--config", str(config), env={"UP_B_KEY": "sk-b"})
    assert "--upstream ignored" in barge.log()
    client = barge.client()
    models = ["a-1", "c", "b", "a-two", "c"]
    lines = [request_line(f"r{i}", chat_body(model=m)) for i, m in enumerate(models, 1)]
    done = run_batch(client, lines)
    assert done.status == "failed"
    assert done.errors is not None and done.errors.data is not None
    assert [(e.code, e.line, e.param) for e in done.errors.data] == [
        ("model_not_found", 2, "body.model"), ("model_not_found", 5, "body.model")]
    assert all("'c'" in (e.message or "") for e in done.errors.data)
    assert done.output_file_id is None
    assert a.stats.total == 0 and b.stats.total == 0  # nothing was sent

    served = run_batch(client, [line for line, m in zip(lines, models, strict=True)
                                if m != "c"])
    assert served.status == "completed", served
    assert served.request_counts is not None and served.request_counts.completed == 3
    assert a.stats.total + b.stats.total == 3


def _serve(tmp_path: Path, command: str, *args: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "barge.cli", command, "--data-dir", str(tmp_path / "data"),
           "--port", str(free_port()), *args]
    return subprocess.run(cmd, env=clean_env() | {"BARGE_ADMIN_KEY": ADMIN_KEY} | (env or {}),
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (None, ["Cannot read"]),
        ('[[upstream]]\nname = "gpu"\nurl = "http://127.0.0.1:9/v1"\napi_key = "sk-x"\n',
         ["'gpu'", "'api_key'", "api_key_env"]),
        ('[[upstream]]\nname = "gpu"\nurl = "http://127.0.0.1:9/v1"\nconcurrency = 0\n',
         ["'gpu'", "'concurrency'"]),
        ('[[upstream]]\nname = "gpu"\nurl = "http://127.0.0.1:9/v1"\napi_key_env = "NO_KEY"\n',
         ["'gpu'", "'api_key_env'", "NO_KEY"]),
        ('[[upstream]]\nname = "gpu"\nurl = "gpu:8000"\n', ["'gpu'", "'url'"]),
        ("[[upstream]\n", ["TOML"]),
        ("", ["no upstream"]),
    ],
)
@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bad_config_file_stops_the_start_with_one_line(
    tmp_path: Path, text: str | None, names: list[str], how: str
) -> None:
    path = tmp_path / "barge.toml"
    if text is not None:
        path.write_text(text)
    if how == "flag":
        done = _serve(tmp_path, "serve", "--config", str(path))
    else:
        done = _serve(tmp_path, "serve", env={"BARGE_CONFIG": str(path)})
    assert done.returncode != 0, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("barge: ") and str(path) in lines[0], lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert "sk-x" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_barge_worker_reads_the_config_file_too(tmp_path: Path) -> None:
    path = tmp_path / "barge.toml"
    path.write_text('[[upstream]]\nname = "gpu"\nurl = "http://127.0.0.1:9/v1"\nweight = 0\n')
    done = _serve(tmp_path, "worker", "--config", str(path))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'weight'" in lines[0], done.stderr
