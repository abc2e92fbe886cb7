"""Webhooks: ``/v1/admin/webhooks`` (register, list, delete an account's endpoints, with
``manage_keys``, scoped as keys are: a stored key sees its own account's, the server's
admin key every account's) and ``GET /v1/batches/{id}/webhook_deliveries`` (how the
batch's events went, for whoever may read the batch).

An endpoint gets the batch events it asks for (all four by default) of its account's
batches, signed with its secret, shown once at registration; see ``engine/webhooks.py``
for how they are sent."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from barge.api.admin import Admin
from barge.api.auth import require
from barge.api.requests import app_of, json_object
from barge.api.responses import JSON
from barge.domain.permissions import Action, Caller
from barge.domain.webhooks import (
    WebhookDelivery,
    WebhookEndpoint,
    check_events,
    new_endpoint_id,
    new_secret,
)
from barge.engine.webhooks import url_refusal
from barge.exceptions import InvalidRequest, PermissionDenied
from barge.keys import check_account

router = APIRouter()

MAX_ENDPOINTS = 20  # live endpoints an account may have


def endpoint_object(e: WebhookEndpoint, *, secret: bool = False) -> dict[str, Any]:
    """An endpoint as the API shows it; its secret only when just made."""
    body: dict[str, Any] = {"id": e.id, "object": "webhook_endpoint", "url": e.url,
                            "events": list(e.events)}
    if secret:
        body["secret"] = e.secret
    return body | {"created_at": e.created_at, "account": e.account}


def delivery_object(d: WebhookDelivery) -> dict[str, Any]:
    return {"event_id": d.event_id, "type": d.type, "endpoint_id": d.endpoint_id,
            "url": d.url, "attempts": d.attempts, "status": d.status.value,
            "last_status_code": d.last_status_code, "last_error": d.last_error,
            "last_attempt_at": _seconds(d.last_attempt_at),
            "next_attempt_at": _seconds(d.next_attempt_at),
            "delivered_at": _seconds(d.delivered_at), "created_at": d.created_at}


def _seconds(t: float | None) -> int | None:
    """A time as whole Unix seconds, as every other time of the API."""
    return None if t is None else int(t)


@router.post("/v1/admin/webhooks")
async def create_webhook(request: Request, caller: Admin) -> JSON:
    app = app_of(request)
    body = await json_object(request)
    account = body.get("account", caller.account)
    if not isinstance(account, str):
        raise InvalidRequest("'account' must be a string.", param="account")
    if account != caller.account and not caller.manages_all_accounts:
        raise PermissionDenied("This key may register webhooks only for its own account.",
                               param="account", code="permission_denied")
    check_account(account)
    url = body.get("url")
    if url is None:
        raise InvalidRequest("Missing required parameter: 'url'.", param="url",
                             code="missing_required_parameter")
    if not isinstance(url, str):
        raise InvalidRequest("'url' must be a string.", param="url", code="invalid_url")
    try:
        events = check_events(body.get("events"))
    except ValueError as e:
        raise InvalidRequest(str(e), param="events", code="invalid_events") from None
    refusal = await url_refusal(url, allow_private=app.settings.webhook_allow_private)
    if refusal is not None:
        message, code = refusal
        if code == "webhook_url_not_allowed":
            message += (" Webhook endpoints must be on public addresses (unless the server"
                        " runs with --webhook-allow-private).")
        raise InvalidRequest(message, param="url", code=code)
    if len(await app.store.list_webhook_endpoints(account)) >= MAX_ENDPOINTS:
        raise InvalidRequest(
            f"An account may have at most {MAX_ENDPOINTS} webhook endpoints; delete one "
            "first.", param="url", code="too_many_webhooks")
    endpoint = WebhookEndpoint(id=new_endpoint_id(), account=account, url=url,
                               events=events, secret=new_secret(),
                               created_at=int(time.time()))
    await app.store.create_webhook_endpoint(endpoint)
    return JSON(endpoint_object(endpoint, secret=True))


@router.get("/v1/admin/webhooks")
async def list_webhooks(request: Request, caller: Admin) -> JSON:
    """The caller's account's endpoints (every account's for the server's admin key)."""
    endpoints = await app_of(request).store.list_webhook_endpoints(
        None if caller.manages_all_accounts else caller.account)
    return JSON({"object": "list", "data": [endpoint_object(e) for e in endpoints],
                 "has_more": False})


@router.delete("/v1/admin/webhooks/{webhook_id}")
async def delete_webhook(request: Request, caller: Admin, webhook_id: str) -> JSON:
    """Delete an endpoint the caller can see; its deliveries not yet made stop."""
    await app_of(request).store.delete_webhook_endpoint(
        None if caller.manages_all_accounts else caller.account, webhook_id)
    return JSON({"id": webhook_id, "object": "webhook_endpoint.deleted", "deleted": True})


@router.get("/v1/batches/{batch_id}/webhook_deliveries")
async def batch_webhook_deliveries(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_BATCH))],
    batch_id: str,
) -> JSON:
    """Every delivery of the batch's events: to which endpoint, how many attempts, and
    how the last one went."""
    store = app_of(request).store
    await store.get_batch(caller.account, batch_id)  # NotFound unless the caller's
    deliveries = await store.webhook_deliveries(batch_id)
    return JSON({"object": "list", "data": [delivery_object(d) for d in deliveries]})
