"""Webhooks (SPEC section 10): subscribe a URL to events, list and delete subscriptions,
read a subscription's delivery log, send it a ping. Deliveries are sent by the workers
(worker.webhooks) from the database outbox (store.webhooks)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from store.models import Webhook
from store.webhooks import (
    check_url,
    create_webhook,
    delete_webhook,
    generate_secret,
    get_webhook_for_tenant,
    list_deliveries,
    list_webhooks,
    record_ping,
)

from ..deps import ServicesDep, SessionDep, TenantDep, owned
from ..schemas import (
    DeliveryList,
    DeliveryPublic,
    ErrorBody,
    ValidationErrorBody,
    WebhookCreated,
    WebhookList,
    WebhookPublic,
    WebhookSpec,
)

__all__ = ["router", "WebhookDep"]

Responses = dict[int | str, dict[str, Any]]
_E: dict[str, Any] = {"model": ErrorBody}
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"],
                   responses={401: {**_E, "description": "no valid API key"},
                              429: {**_E, "description": "rate limit"}})
_NOT_FOUND: Responses = {404: {**_E, "description": "no such webhook for this API key"}}


def webhook_of_tenant(webhook_id: str, tenant: TenantDep, session: SessionDep) -> Webhook:
    return owned(session, get_webhook_for_tenant(session, tenant.id, webhook_id), "webhook",
                 webhook_id)


WebhookDep = Annotated[Webhook, Depends(webhook_of_tenant)]


@router.post(
    "", status_code=201, response_model=WebhookCreated, operation_id="createWebhook",
    responses={422: {"model": ValidationErrorBody,
                     "description": "`message` names the field: an unknown event, a URL "
                                    "that is not http(s) or not of a public address"},
               400: {**_E, "description": "a body that is not UTF-8 JSON"},
               409: {**_E, "description": "as many webhooks as MLP_MAX_WEBHOOKS_PER_TENANT"},
               413: {**_E, "description": "a body over MLP_MAX_REQUEST_BYTES"}},
    summary="subscribe a URL to events; the answer shows the signing secret, this once")
def create(body: WebhookSpec, response: Response, services: ServicesDep,
           session: SessionDep, tenant: TenantDep) -> WebhookCreated:
    # UnsafeURL answers 422 naming `url` (service.errors)
    check_url(body.url, allow_private=services.settings.webhook_allow_private)
    secret = body.secret or generate_secret()
    webhook = create_webhook(session, tenant_id=tenant.id, url=body.url, events=body.events,
                             secret=secret,
                             max_per_tenant=services.settings.max_webhooks_per_tenant)
    response.headers["Location"] = f"/v1/webhooks/{webhook.id}"
    return WebhookCreated(**WebhookPublic.from_row(webhook).model_dump(), secret=secret)


@router.get("", response_model=WebhookList, operation_id="listWebhooks",
            summary="this API key's webhooks, newest first (secrets are never shown)")
def list_(session: SessionDep, tenant: TenantDep) -> WebhookList:
    return WebhookList(items=[WebhookPublic.from_row(w)
                              for w in list_webhooks(session, tenant.id)])


@router.get("/{webhook_id}", response_model=WebhookPublic, operation_id="getWebhook",
            responses=_NOT_FOUND, summary="one webhook (its secret is never shown)")
def get(webhook: WebhookDep) -> WebhookPublic:
    return WebhookPublic.from_row(webhook)


@router.delete("/{webhook_id}", status_code=204, response_class=Response,
               operation_id="deleteWebhook", responses=_NOT_FOUND,
               summary="delete a webhook and its deliveries (pending ones are not sent)")
def delete(webhook: WebhookDep, session: SessionDep) -> Response:
    delete_webhook(session, webhook)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList,
            operation_id="listWebhookDeliveries",
            responses={**_NOT_FOUND, 400: {**_E, "description": "a bad cursor"}},
            summary="the delivery log, newest first: status, attempts, last response code, "
                    "next attempt")
def deliveries(webhook: WebhookDep, session: SessionDep,
               limit: Annotated[int, Query(ge=1, le=200)] = 50,
               cursor: Annotated[str | None, Query(max_length=512)] = None) -> DeliveryList:
    rows, next_cursor = list_deliveries(session, webhook.id, limit=limit, cursor=cursor)
    return DeliveryList(items=[DeliveryPublic.from_row(d) for d in rows],
                        next_cursor=next_cursor)


@router.post("/{webhook_id}/ping", status_code=202, response_model=DeliveryPublic,
             operation_id="pingWebhook", responses=_NOT_FOUND,
             summary="queue a `ping` delivery to this webhook (sent by a worker)")
def ping(webhook: WebhookDep, session: SessionDep) -> DeliveryPublic:
    return DeliveryPublic.from_row(record_ping(session, webhook))
