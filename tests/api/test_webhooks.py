"""Webhooks against the real ``barge serve``: a loopback endpoint receives each batch
event signed so that the official SDK's ``webhooks.unwrap`` accepts it; failures are
retried with the same ``webhook-id`` (across a restart too) and visible in
``/v1/batches/{id}/webhook_deliveries``; registration refuses what must not be an
endpoint; a slow endpoint never slows a batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from api.support import (
    CHAT,
    auth_headers,
    chat_line,
    root_url,
    run_batch,
    upload,
    wait_for,
    wait_status,
    wait_terminal,
)
from barge_process import ADMIN_KEY, BargeProcess, free_port
from openai import OpenAI
from upstream import UpstreamServer

Factory = Callable[..., BargeProcess]
DELIVERY_FIELDS = {"event_id", "type", "endpoint_id", "url", "attempts", "status",
                   "last_status_code", "last_error", "last_attempt_at", "next_attempt_at",
                   "delivered_at", "created_at"}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    at: float = field(default_factory=time.monotonic)


class Receiver:
    """A loopback webhook endpoint in a thread of its own: records every delivery as it
    arrives, and answers the first ``fail_first`` 500 (then 200), after ``delay`` seconds,
    those from the ``hold_from``-th on (0-based) only once ``hold`` is set."""

    def __init__(self, port: int | None = None, *, fail_first: int = 0,
                 delay: float = 0.0, hold_from: int | None = None) -> None:
        self.port = port or free_port()
        self.fail_first = fail_first
        self.delay = delay
        self.hold_from = hold_from
        self.hold = threading.Event()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook-receiver",
                                        daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/barge"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:  # recorded as it arrives, with the answer it is to get
            n = len(self.received)
            status = 500 if n < self.fail_first else 200
            self.received.append(Received(dict(request.headers), body, status))
        if self.hold_from is not None and n >= self.hold_from:
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 20)
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=status, text="nope" if status >= 300 else "ok")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/barge", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self) -> Receiver:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def close(self) -> None:
        self.hold.set()
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()

    def deliveries(self) -> list[Received]:
        with self._lock:
            return list(self.received)


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*, start: bool = True, **kwargs: Any) -> Receiver:
        r = Receiver(**kwargs)
        made.append(r)
        return r.start() if start else r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def hooked(barge_factory: Factory, upstream: UpstreamServer) -> BargeProcess:
    """A barge whose webhooks may go to loopback, retrying quickly."""
    return barge_factory(upstream.base_url, "--backoff-base", "0.01",
                         "--webhook-allow-private", "--webhook-backoff-base", "0.1")


def admin(barge: BargeProcess, method: str, path: str, *, key: str = ADMIN_KEY,
          json: Any = None) -> httpx.Response:
    return httpx.request(method, f"{root_url(barge)}/v1{path}", headers=auth_headers(key),
                         json=json, timeout=30)


def register(barge: BargeProcess, url: str, **body: Any) -> dict[str, Any]:
    r = admin(barge, "POST", "/admin/webhooks", json={"url": url, **body})
    assert r.status_code == 200, r.text
    created: dict[str, Any] = r.json()
    return created


def deliveries(barge: BargeProcess, batch_id: str, key: str = ADMIN_KEY) -> list[dict[str, Any]]:
    r = admin(barge, "GET", f"/batches/{batch_id}/webhook_deliveries", key=key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list", body
    data: list[dict[str, Any]] = body["data"]
    for d in data:
        assert set(d) == DELIVERY_FIELDS, d
    return data


def wait_delivery(barge: BargeProcess, batch_id: str, status: str, *,
                  timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = deliveries(barge, batch_id)
        return found[0] if found and found[0]["status"] == status else None

    return wait_for(check, timeout=timeout, interval=0.05,
                    what=f"the delivery of {batch_id}'s event to be {status}")


def events_for(receiver: Receiver, batch_id: str) -> list[Received]:
    return [r for r in receiver.deliveries() if batch_id.encode() in r.body]


def unwrap(sdk: OpenAI, got: Received, secret: str) -> Any:
    return sdk.webhooks.unwrap(got.body, got.headers, secret=secret)


# -- events, signed as OpenAI signs them -----------------------------------------------------


def test_completed_cancelled_and_failed_events_verify_with_the_official_sdk(
    hooked: BargeProcess, receivers: Callable[..., Receiver], connect: Callable[..., OpenAI]
) -> None:
    receiver = receivers()
    endpoint = register(hooked, receiver.url)
    assert endpoint["object"] == "webhook_endpoint" and endpoint["id"].startswith("we_")
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["events"] == ["batch.completed", "batch.failed", "batch.expired",
                                  "batch.cancelled"]
    assert endpoint["account"] == "default" and endpoint["url"] == receiver.url
    assert isinstance(endpoint["created_at"], int)
    client = connect(hooked)
    sdk = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")

    completed = run_batch(client, [chat_line(f"r{i}") for i in range(3)])
    assert completed.status == "completed"
    (got,) = wait_for(lambda: events_for(receiver, completed.id), what="batch.completed")
    event = unwrap(sdk, got, endpoint["secret"])
    assert (event.type, event.data.id, event.object) == (
        "batch.completed", completed.id, "event")
    assert event.id.startswith("evt_") and got.headers["webhook-id"] == event.id
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30
    assert got.headers["Content-Type"] == "application/json"
    assert got.body == (b'{"id":"%s","object":"event","created_at":%d,'
                        b'"type":"batch.completed","data":{"id":"%s"}}'
                        % (event.id.encode(), event.created_at, completed.id.encode()))
    assert completed.completed_at is not None
    assert abs(event.created_at - completed.completed_at) <= 1
    (d,) = wait_for(lambda: [x for x in deliveries(hooked, completed.id)
                             if x["status"] == "delivered"], what="delivered")
    assert (d["event_id"], d["type"], d["endpoint_id"], d["url"], d["attempts"]) == (
        event.id, "batch.completed", endpoint["id"], receiver.url, 1)
    assert (d["last_status_code"], d["last_error"], d["next_attempt_at"]) == (200, None, None)
    assert d["delivered_at"] is not None and d["last_attempt_at"] is not None

    # Cancelled: requests slow enough that the cancel comes first.
    f = upload(client, [chat_line(f"slow-{i}", delay=2) for i in range(3)])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    client.batches.cancel(b.id)
    assert wait_status(client, b.id, {"cancelled"}).status == "cancelled"
    (got,) = wait_for(lambda: events_for(receiver, b.id), what="batch.cancelled")
    event = unwrap(sdk, got, endpoint["secret"])
    assert (event.type, event.data.id) == ("batch.cancelled", b.id)

    # Failed: a line that is not JSON.
    f = upload(client, b'{"custom_id": "ok", "method": "POST"\nnot json\n')
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert wait_terminal(client, b.id).status == "failed"
    (got,) = wait_for(lambda: events_for(receiver, b.id), what="batch.failed")
    event = unwrap(sdk, got, endpoint["secret"])
    assert (event.type, event.data.id) == ("batch.failed", b.id)
    sdk.close()

    time.sleep(0.5)  # nothing more comes: one event per batch
    assert len(receiver.deliveries()) == 3


def test_an_endpoint_gets_only_the_events_it_asked_for(
    hooked: BargeProcess, receivers: Callable[..., Receiver], connect: Callable[..., OpenAI]
) -> None:
    only_failed, everything = receivers(), receivers()
    register(hooked, only_failed.url, events=["batch.failed"])
    register(hooked, everything.url)
    client = connect(hooked)
    done = run_batch(client, [chat_line("one")])
    wait_for(lambda: events_for(everything, done.id), what="batch.completed")
    assert [d["url"] for d in deliveries(hooked, done.id)] == [everything.url]
    assert events_for(only_failed, done.id) == []


# -- retries -----------------------------------------------------------------------------------


def test_failures_are_retried_with_the_same_id_until_delivered(
    hooked: BargeProcess, receivers: Callable[..., Receiver], connect: Callable[..., OpenAI]
) -> None:
    receiver = receivers(fail_first=2, hold_from=2)
    endpoint = register(hooked, receiver.url)
    client = connect(hooked)
    sdk = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    done = run_batch(client, [chat_line("x")])

    failing = wait_for(lambda: (d := deliveries(hooked, done.id)) and d[0]["attempts"] == 2
                       and d[0], what="two failed attempts")
    # The third attempt is held at the endpoint: the failing state stays to be seen.
    assert failing["status"] == "failing"
    assert failing["last_status_code"] == 500
    assert "500" in failing["last_error"] and "nope" in failing["last_error"]
    assert failing["next_attempt_at"] is not None and failing["delivered_at"] is None
    receiver.hold.set()

    d = wait_delivery(hooked, done.id, "delivered")
    assert (d["attempts"], d["last_status_code"], d["last_error"]) == (3, 200, None)
    got = events_for(receiver, done.id)
    assert [g.status for g in got] == [500, 500, 200]
    assert {g.headers["webhook-id"] for g in got} == {d["event_id"]}
    assert {g.body for g in got} == {got[0].body}  # the same event each time
    for g in got:  # each attempt signed on its own
        assert unwrap(sdk, g, endpoint["secret"]).data.id == done.id
    assert got[1].at - got[0].at >= 0.05  # backed off
    sdk.close()

    metrics = httpx.get(f"{root_url(hooked)}/metrics", timeout=10).text
    assert 'barge_webhook_deliveries_total{outcome="failed"} 2.0' in metrics
    assert 'barge_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
    assert 'barge_webhook_deliveries_total{outcome="given_up"} 0.0' in metrics
    assert "barge_webhook_deliveries_pending 0.0" in metrics


def test_an_event_outlives_a_restart_and_arrives_once(
    barge_factory: Factory, upstream: UpstreamServer, receivers: Callable[..., Receiver],
    connect: Callable[..., OpenAI]
) -> None:
    proc = barge_factory(upstream.base_url, "--webhook-allow-private",
                         "--webhook-backoff-base", "0.1")
    receiver = receivers(start=False)  # down: nothing listens on its port yet
    endpoint = register(proc, receiver.url)
    client = connect(proc)
    done = run_batch(client, [chat_line("a"), chat_line("b")])

    failing = wait_for(lambda: (d := deliveries(proc, done.id)) and d[0]["attempts"] >= 2
                       and d[0], what="failed attempts while the endpoint is down")
    assert failing["status"] == "failing" and failing["last_status_code"] is None
    assert "connect" in failing["last_error"].lower()
    metrics = httpx.get(f"{root_url(proc)}/metrics", timeout=10).text
    assert "barge_webhook_deliveries_pending 1.0" in metrics

    assert proc.terminate() == 0
    receiver.start()  # the endpoint comes up while barge is down
    proc.restart()

    d = wait_delivery(proc, done.id, "delivered")
    assert d["event_id"] == failing["event_id"] and d["attempts"] > failing["attempts"]
    time.sleep(1.0)  # nothing more comes
    (got,) = events_for(receiver, done.id)
    assert got.headers["webhook-id"] == failing["event_id"]
    sdk = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    assert unwrap(sdk, got, endpoint["secret"]).data.id == done.id
    sdk.close()


# -- a slow endpoint ---------------------------------------------------------------------------


def test_a_slow_endpoint_does_not_slow_batches(
    barge_factory: Factory, upstream: UpstreamServer, receivers: Callable[..., Receiver],
    connect: Callable[..., OpenAI]
) -> None:
    proc = barge_factory(upstream.base_url, "--webhook-allow-private",
                         "--webhook-timeout", "60", "--webhook-concurrency", "1")
    slow = receivers(delay=30)
    register(proc, slow.url)
    client = connect(proc)
    started = time.monotonic()
    first = run_batch(client, [chat_line(f"a{i}") for i in range(20)])
    wait_for(lambda: events_for(slow, first.id), what="the first event being sent")
    # While that delivery hangs (and takes the only webhook slot), batches go on.
    second = run_batch(client, [chat_line(f"b{i}") for i in range(20)])
    third = run_batch(client, [chat_line(f"c{i}") for i in range(20)])
    assert (first.status, second.status, third.status) == ("completed",) * 3
    assert time.monotonic() - started < 15
    (d,) = deliveries(proc, first.id)
    assert (d["status"], d["attempts"]) == ("pending", 0)
    assert [x["status"] for x in deliveries(proc, third.id)] == ["pending"]


# -- registration --------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/hook",
    "http://10.1.2.3/hook", "http://192.168.0.10/hook", "http://169.254.169.254/latest",
    "http://0.0.0.0/hook", "http://224.0.0.1/hook", "https://[fe80::1]/hook",
    "http://[::ffff:127.0.0.1]/hook", "http://127.1/hook",
])
def test_private_endpoints_are_refused(shared_barge: BargeProcess, url: str) -> None:
    r = admin(shared_barge, "POST", "/admin/webhooks", json={"url": url})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == (
        "invalid_request_error", "url", "webhook_url_not_allowed"), err
    assert "--webhook-allow-private" in err["message"]


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"url": "ftp://example.com/hook"}, "url", "invalid_url"),
    ({"url": "http://"}, "url", "invalid_url"),
    ({"url": "example.com/hook"}, "url", "invalid_url"),
    ({"url": 42}, "url", "invalid_url"),
    ({}, "url", "missing_required_parameter"),
    ({"url": "https://93.184.216.34/hook", "events": ["batch.nope"]}, "events",
     "invalid_events"),
    ({"url": "https://93.184.216.34/hook", "events": []}, "events", "invalid_events"),
    ({"url": "https://93.184.216.34/hook", "events": "batch.completed"}, "events",
     "invalid_events"),
])
def test_bad_registrations_are_400(shared_barge: BargeProcess, body: dict[str, Any],
                                   param: str, code: str) -> None:
    r = admin(shared_barge, "POST", "/admin/webhooks", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)


def test_register_list_and_delete_per_account(shared_barge: BargeProcess) -> None:
    barge = shared_barge
    account = f"wh-{time.monotonic_ns()}"
    # A public address (no DNS needed), in an account of its own that runs no batches.
    made = register(barge, "https://93.184.216.34/hook", events=["batch.expired"],
                    account=account)
    assert (made["account"], made["events"]) == (account, ["batch.expired"])
    key = admin(barge, "POST", "/admin/keys", json={"name": "k", "role": "admin",
                                                     "account": account}).json()["key"]
    other = admin(barge, "POST", "/admin/keys", json={"name": "o", "role": "admin",
                                                       "account": account + "-x"}).json()["key"]
    member = admin(barge, "POST", "/admin/keys", json={"name": "m", "role": "member",
                                                        "account": account}).json()["key"]

    listed = admin(barge, "GET", "/admin/webhooks", key=key).json()
    assert listed == {"object": "list", "has_more": False,
                      "data": [{k: v for k, v in made.items() if k != "secret"}]}
    assert admin(barge, "GET", "/admin/webhooks", key=other).json()["data"] == []
    everyone = admin(barge, "GET", "/admin/webhooks").json()["data"]  # the server's key
    assert made["id"] in {e["id"] for e in everyone}
    assert all("secret" not in e for e in everyone)

    # Another account's key may neither register for it nor delete its endpoint.
    r = admin(barge, "POST", "/admin/webhooks", key=other,
              json={"url": "https://93.184.216.34/x", "account": account})
    assert r.status_code == 403, r.text
    r = admin(barge, "DELETE", f"/admin/webhooks/{made['id']}", key=other)
    assert r.status_code == 404, r.text
    # A key without manage_keys may not touch webhooks at all.
    for method, path in (("GET", "/admin/webhooks"), ("DELETE", f"/admin/webhooks/{made['id']}"),
                         ("POST", "/admin/webhooks")):
        assert admin(barge, method, path, key=member,
                     json={"url": "https://93.184.216.34/x"}).status_code == 403

    r = admin(barge, "DELETE", f"/admin/webhooks/{made['id']}", key=key)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": made["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert admin(barge, "GET", "/admin/webhooks", key=key).json()["data"] == []
    r = admin(barge, "DELETE", f"/admin/webhooks/{made['id']}", key=key)
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "webhook_id"


def test_deliveries_of_another_accounts_batch_are_404(
    shared_barge: BargeProcess, connect: Callable[..., OpenAI]
) -> None:
    done = run_batch(connect(shared_barge), [chat_line("z")])
    assert deliveries(shared_barge, done.id) == []  # no endpoint: no deliveries
    key = admin(shared_barge, "POST", "/admin/keys",
                json={"name": "r", "role": "reader",
                      "account": f"other-{time.monotonic_ns()}"}).json()["key"]
    r = admin(shared_barge, "GET", f"/batches/{done.id}/webhook_deliveries", key=key)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["param"] == "batch_id"


def test_addresses_are_checked_again_at_each_delivery(
    barge_factory: Factory, upstream: UpstreamServer, receivers: Callable[..., Receiver],
    connect: Callable[..., OpenAI]
) -> None:
    """Endpoints registered while loopback was allowed, then the server restarted without
    --webhook-allow-private: each attempt is refused (a literal address, and a name that
    resolves to one), as a failed attempt saying why, and nothing reaches them."""
    proc = barge_factory(upstream.base_url, "--webhook-allow-private",
                         "--webhook-backoff-base", "0.1")
    receiver = receivers()
    by_address = register(proc, receiver.url)
    by_name = register(proc, receiver.url.replace("127.0.0.1", "localhost"))
    assert proc.terminate() == 0
    proc.args.remove("--webhook-allow-private")
    proc.restart()

    done = run_batch(connect(proc), [chat_line("q")])
    refused = wait_for(lambda: (d := deliveries(proc, done.id)) and all(
        x["attempts"] >= 2 for x in d) and d, what="refused attempts")
    assert {d["endpoint_id"] for d in refused} == {by_address["id"], by_name["id"]}
    for d in refused:
        assert d["status"] == "failing" and d["last_status_code"] is None, d
        assert "webhook_url_not_allowed" in d["last_error"], d
        assert "127.0.0.1" in d["last_error"] or "::1" in d["last_error"], d
    assert receiver.deliveries() == []
