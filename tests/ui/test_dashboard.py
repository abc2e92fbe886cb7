"""Browser: the dashboard at /ui/ in headless Chromium against a real ``barge serve``.

Signing in (and a wrong key's error), a running batch's progress bar moving to completed
with no reload, downloading its output, cancelling and deleting with the buttons, a
read-only key that is offered neither, a batch's errors, metadata and webhook deliveries
(rendered as text, never as HTML), paging with "Load more", and the API docs page, which
loads everything from the server itself. Every page is checked by the ``new_page`` fixture
for requests outside 127.0.0.1 and for console errors (CSP violations included)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from api.support import CHAT, chat_line, to_jsonl, upload, wait_status, wait_terminal
from barge_process import ADMIN_KEY
from ui.support import Dashboard, Watch

if os.environ.get("BARGE_TEST_BROWSER") != "required":
    pytest.importorskip("playwright", reason="the browser tests need playwright (the test extra)")
from playwright.sync_api import Page, expect

NewPage = Callable[..., Page]
REPO = Path(__file__).resolve().parents[2]


def create_batch(dash: Dashboard, lines: list[dict[str, Any]] | bytes,
                 metadata: dict[str, str] | None = None) -> str:
    f = upload(dash.client, lines if isinstance(lines, bytes) else to_jsonl(lines))
    return dash.client.batches.create(input_file_id=f.id, endpoint=CHAT,
                                      completion_window="24h", metadata=metadata).id


def staggered(prefix: str, n: int, step: float) -> list[dict[str, Any]]:
    """``n`` requests, the i-th answered after ``i * step`` seconds: a batch that makes
    steady progress for about ``n * step`` seconds."""
    return [chat_line(f"{prefix}-{i}", delay=round(i * step, 2)) for i in range(n)]


def long_running(prefix: str) -> list[dict[str, Any]]:
    """About 9 s of work at 8 in flight, each request 1.5 s: a cancel drains fast."""
    return [chat_line(f"{prefix}-{i}", delay=1.5) for i in range(48)]


def sign_in(page: Page, key: str = ADMIN_KEY) -> None:
    page.goto("/ui")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#session")).to_be_visible()


def row(page: Page, batch_id: str) -> Any:
    return page.locator(f'tr[data-batch-id="{batch_id}"]')


def make_key(dash: Dashboard, role: str) -> str:
    r = httpx.post(f"{dash.barge.base_url}/admin/keys", timeout=10,
                   headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                   json={"name": f"ui-{role}", "role": role})
    assert r.status_code == 200, r.text
    key: str = r.json()["key"]
    return key


def test_a_wrong_key_gets_a_clear_sign_in_error(new_page: NewPage) -> None:
    page = new_page()
    page.goto("/ui")
    assert page.url.endswith("/ui/")
    page.get_by_label("API key").fill("sk-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    error = page.locator("#sign-in-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("This key was not accepted")
    expect(error).to_contain_text("Incorrect API key")
    expect(page.locator("#session")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []


def test_progress_moves_to_completed_without_reload_and_the_output_downloads(
    new_page: NewPage, dashboard: Dashboard, watch: Watch
) -> None:
    lines = staggered("prog", 10, 0.6)
    batch_id = create_batch(dashboard, lines, metadata={"job": "progress"})
    page = new_page()
    sign_in(page)
    expect(page.locator("#who")).to_have_text("default · admin")
    # The key is in this tab's sessionStorage, nowhere else.
    assert page.evaluate("Object.values(sessionStorage)") == [ADMIN_KEY]
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    page.evaluate("window.__notReloaded = true")

    bar = row(page, batch_id).get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuemax", "10")
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen.add(int(bar.get_attribute("aria-valuenow") or 0))
        if row(page, batch_id).get_attribute("data-status") == "completed":
            break
        time.sleep(0.1)
    expect(row(page, batch_id).locator(".badge")).to_have_text("completed")
    assert int(bar.get_attribute("aria-valuenow") or 0) == 10
    assert any(0 < n < 10 for n in seen), f"no partial progress shown: {sorted(seen)}"
    assert page.evaluate("window.__notReloaded") is True
    expect(row(page, batch_id)).to_contain_text("/v1/chat/completions")
    tokens = row(page, batch_id).locator("[data-col=tokens]")
    expect(tokens).to_have_text(re.compile(r"^[1-9][\d,]*[1-9][\d,]* in · [1-9][\d,]* out$"))
    expect(row(page, batch_id).locator("[data-col=requests]")).to_contain_text("10 completed")
    expect(row(page, batch_id).locator("[data-col=ended]")).not_to_have_text("—")

    row(page, batch_id).get_by_role("link", name=batch_id).click()
    expect(page.locator(".batch-head h1")).to_have_text(batch_id)
    expect(page.locator("[data-table=metadata]")).to_contain_text("progress")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download output").click()
    download = download_info.value
    assert download.suggested_filename == f"{batch_id}_output.jsonl"
    got = Path(download.path()).read_bytes()
    ids = {json.loads(line)["custom_id"] for line in got.splitlines()}
    assert ids == {line["custom_id"] for line in lines}
    # The key went in headers only: no request URL carries it.
    assert not [u for u in watch.requests if ADMIN_KEY in u]


def test_a_running_batch_page_shows_its_newest_results(
    new_page: NewPage, dashboard: Dashboard
) -> None:
    """The batch page follows the results recorded after it opened (GET …/results from
    ``after=latest``): rows come while the batch runs, newest first, each once, with the
    upstream's status; they stay once it has ended."""
    n = 14
    lines = staggered("res", n, 0.4)  # ~6 s at 8 in flight: a few refreshes while it runs
    batch_id = create_batch(dashboard, lines)
    wait_status(dashboard.client, batch_id, ["in_progress"])
    page = new_page()
    sign_in(page)
    expect(page.locator("#who")).to_have_text("default · admin")
    page.goto(f"/ui/#/batches/{batch_id}")
    expect(page.locator(".batch-head h1")).to_have_text(batch_id)
    results = page.locator("[data-table=results] tbody tr")
    while_running = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = page.locator(".batch-head .badge").text_content()
        if status == "completed":
            break
        if status == "in_progress":
            while_running = max(while_running, results.count())
        time.sleep(0.1)
    assert while_running > 0, "no result shown while the batch ran"
    expect(page.locator(".batch-head .badge")).to_have_text("completed")
    # The results recorded just before the end come at the next refresh.
    expect(page.locator("[data-table=results]")).to_contain_text(f"res-{n - 1}")
    ids = [c.text_content() or "" for c in
           page.locator("[data-table=results] tbody tr td:first-child").all()]
    assert ids and len(ids) == len(set(ids)) <= n, ids
    assert set(ids) <= {line["custom_id"] for line in lines}
    # Newest first: the staggered requests finish in order, so the numbers go down.
    numbers = [int(i.split("-")[1]) for i in ids]
    assert numbers == sorted(numbers, reverse=True), ids
    answers = page.locator("[data-table=results] tbody tr td:nth-child(2)")
    assert {a.text_content() for a in answers.all()} == {"200"}


def test_cancel_and_delete_with_the_buttons(new_page: NewPage, dashboard: Dashboard) -> None:
    batch_id = create_batch(dashboard, long_running("long"))
    wait_status(dashboard.client, batch_id, ["in_progress"])
    page = new_page()
    sign_in(page)
    row(page, batch_id).get_by_role("link", name=batch_id).click()
    expect(page.locator(".batch-head .badge")).to_have_text("in_progress")
    expect(page.get_by_role("button", name="Delete batch")).to_have_count(0)  # unfinished
    page.get_by_role("button", name="Cancel batch").click()
    page.get_by_role("button", name="Yes, cancel it").click()
    expect(page.locator(".batch-head .badge")).to_have_text("cancelled", timeout=15_000)
    assert dashboard.client.batches.retrieve(batch_id).status == "cancelled"
    expect(page.get_by_role("button", name="Cancel batch")).to_have_count(0)

    page.get_by_role("button", name="Delete batch").click()
    page.get_by_role("button", name="Yes, delete it").click()
    expect(page.locator("#notice")).to_have_text(f"Deleted batch {batch_id}.")
    expect(page.locator("#list-view")).to_be_visible()
    expect(row(page, batch_id)).to_have_count(0)
    r = httpx.get(f"{dashboard.barge.base_url}/batches/{batch_id}", timeout=10,
                  headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 404


def test_a_read_only_key_sees_batches_but_no_cancel_or_delete(
    new_page: NewPage, dashboard: Dashboard, artifacts: Path
) -> None:
    running = create_batch(dashboard, long_running("ro"))
    hostile = "<img src=x onerror=alert(1)>"
    bad = create_batch(dashboard, to_jsonl([chat_line("ok-1"), b"{not json", chat_line("ok-1")]),
                       metadata={"note": hostile})
    assert wait_terminal(dashboard.client, bad).status == "failed"
    reader = make_key(dashboard, "reader")

    page = new_page()
    # A server with webhook deliveries answers this route; one without, 404 (left out).
    deliveries = {"object": "list", "data": [{
        "event_id": "evt_1", "type": "batch.failed", "endpoint_id": "we_1",
        "url": "https://hooks.example/<b>x</b>", "attempts": 3, "status": "failing",
        "last_status_code": 503, "last_error": None, "last_attempt_at": int(time.time()),
        "next_attempt_at": int(time.time()) + 60, "delivered_at": None,
        "created_at": int(time.time()),
    }]}
    page.route(f"**/v1/batches/{bad}/webhook_deliveries",
               lambda route: route.fulfill(json=deliveries))
    sign_in(page, reader)
    expect(page.locator("#who")).to_have_text("default · reader")

    row(page, running).get_by_role("link", name=running).click()
    expect(page.locator(".batch-head .badge")).to_have_text("in_progress")
    expect(page.get_by_role("button", name="Download input")).to_be_visible()
    expect(page.locator("#batch-actions button")).to_have_count(1)  # no cancel, no delete
    expect(page.locator("[data-table=deliveries]")).to_have_count(0)  # 404: left out

    page.goto(f"/ui/#/batches/{bad}")
    expect(page.locator(".batch-head .badge")).to_have_text("failed")
    errors = page.locator("[data-table=errors] tbody tr")
    expect(errors).to_have_count(2)
    expect(errors.nth(0)).to_contain_text("2")
    expect(errors.nth(0)).to_contain_text("invalid_json_line")
    expect(errors.nth(1)).to_contain_text("duplicate_custom_id")
    expect(page.locator("[data-table=metadata]")).to_contain_text(hostile)
    table = page.locator("[data-table=deliveries]")
    expect(table).to_contain_text("batch.failed")
    expect(table).to_contain_text("failing")
    expect(table).to_contain_text("https://hooks.example/<b>x</b>")
    expect(table).to_contain_text("503")
    assert page.locator("#batch-detail img, #batch-detail b").count() == 0  # text, not HTML
    page.screenshot(path=str(artifacts / "batch-page-reader.png"), full_page=True)
    expect(page.get_by_role("button", name="Delete batch")).to_have_count(0)

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    dashboard.client.batches.cancel(running)


def test_the_list_pages_with_load_more(
    new_page: NewPage, dashboard: Dashboard, artifacts: Path
) -> None:
    """Also takes the README's screenshot of the list (docs/dashboard.png, rewritten when
    BARGE_TEST_UPDATE_SCREENSHOT=1)."""
    mixed = [chat_line(f"mix-{i}", **({"status": 400} if i % 4 == 0 else {})) for i in range(8)]
    wait_terminal(dashboard.client, create_batch(dashboard, mixed))
    running = create_batch(dashboard, staggered("shot", 12, 1.0), metadata={"job": "nightly"})
    page = new_page()
    sign_in(page)
    bar = row(page, running).get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", re.compile("^([4-9]|1[01])$"), timeout=20_000)
    page.mouse.move(0, 0)  # no row under the pointer
    shot = artifacts / "dashboard-list.png"
    page.screenshot(path=str(shot))
    if os.environ.get("BARGE_TEST_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "dashboard.png")
    dashboard.client.batches.cancel(running)

    for i in range(21):
        create_batch(dashboard, [chat_line(f"page-{i}")])
    total = sum(1 for _ in dashboard.client.batches.list(limit=100))
    page.get_by_role("button", name="Refresh").click()
    rows = page.locator("#batch-rows tr")
    expect(rows).to_have_count(20)
    more = page.get_by_role("button", name="Load more")
    expect(more).to_be_visible()
    while more.is_visible():
        more.click()
        page.wait_for_timeout(100)
    expect(rows).to_have_count(total)
    expect(more).to_be_hidden()


def test_the_api_docs_load_from_the_server_alone(new_page: NewPage) -> None:
    page = new_page()
    page.goto("/docs")
    operation = page.locator(".opblock-summary-path[data-path='/v1/batches']").first
    expect(operation).to_be_visible(timeout=20_000)
    expect(page.locator(".opblock-summary-path[data-path='/v1/me']")).to_be_visible()
