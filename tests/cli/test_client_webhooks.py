"""``barge webhooks add|list|rm`` against a real server's ``/v1/admin/webhooks``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from barge_process import BargeProcess
from cli.client_support import cli


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BargeProcess]:
    """A barge whose webhook endpoints may be on loopback (nothing here ever sends)."""
    proc = BargeProcess(tmp_path / "data", "http://127.0.0.1:9/v1", "--webhook-allow-private")
    proc.start()
    yield proc
    proc.kill()


def test_webhooks_add_list_rm(server: BargeProcess) -> None:
    added = cli(server, "webhooks", "add", "http://127.0.0.1:9/hook",
                "--events", "batch.completed, batch.failed")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and added.stdout == secret + "\n"  # the secret alone
    assert "shown only now" in added.stderr
    hook_id = added.stderr.split()[1]
    assert hook_id.startswith("we_")
    assert "batch.completed, batch.failed" in added.stderr

    raw = cli(server, "webhooks", "add", "http://127.0.0.1:9/other", "--json")
    assert raw.returncode == 0, raw.stderr
    other = json.loads(raw.stdout)
    assert other["object"] == "webhook_endpoint" and other["secret"].startswith("whsec_")
    assert len(other["events"]) == 4  # the server's default: every batch event

    listed = json.loads(cli(server, "webhooks", "list", "--json").stdout)
    assert listed["object"] == "list"
    assert {w["id"] for w in listed["data"]} == {hook_id, other["id"]}
    assert all("secret" not in w for w in listed["data"])
    table = cli(server, "webhooks", "list").stdout
    row = next(line for line in table.splitlines() if hook_id in line)
    assert "http://127.0.0.1:9/hook" in row and "batch.completed, batch.failed" in row
    assert secret not in table

    removed = cli(server, "webhooks", "rm", hook_id)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"removed {hook_id}"
    gone = json.loads(cli(server, "webhooks", "rm", other["id"], "--json").stdout)
    assert gone == {"id": other["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert json.loads(cli(server, "webhooks", "list", "--json").stdout)["data"] == []


def test_webhooks_errors(server: BargeProcess) -> None:
    unknown = cli(server, "webhooks", "add", "http://127.0.0.1:9/hook", "--events", "batch.x")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("barge: Unknown event type 'batch.x'")
    empty = cli(server, "webhooks", "add", "http://127.0.0.1:9/hook", "--events", " , ")
    assert empty.returncode == 2
    no_url = cli(server, "webhooks", "add")
    assert no_url.returncode == 2
