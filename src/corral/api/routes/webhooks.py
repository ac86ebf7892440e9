"""Webhook subscriptions over HTTP: add (admin), list (viewer), remove (admin).

The subscriptions themselves, their checks and their delivery live in
:mod:`corral.webhooks`; these routes only translate.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path

from corral.api.callbacks import NAME
from corral.api.deps import Admin, EngineDep, Viewer
from corral.api.errors import ERRORS
from corral.api.models import WebhookIn
from corral.webhooks import add_subscription, list_subscriptions, remove_subscription

router = APIRouter(tags=["webhooks"])


@router.post("/api/v1/webhooks", responses=ERRORS,
             summary="Subscribe a URL to matching events.", operation_id="add_webhook")
def add_webhook(body: WebhookIn, engine: EngineDep, _: Admin) -> dict[str, Any]:
    return add_subscription(engine, name=body.name, url=body.url,
                            filters=body.filters.model_dump(exclude_unset=True),
                            secret=body.secret, from_start=body.from_start)


@router.get("/api/v1/webhooks", responses=ERRORS,
            summary="Subscriptions: status, cursor, last error (never the secret).",
            operation_id="list_webhooks")
def list_webhooks(engine: EngineDep, _: Viewer) -> list[dict[str, Any]]:
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in hook.items()}
            for hook in list_subscriptions(engine.store)]


@router.delete("/api/v1/webhooks/{name}", responses=ERRORS,
               summary="Delete a subscription.", operation_id="remove_webhook")
def remove_webhook(name: Annotated[str, Path(pattern=NAME)], engine: EngineDep,
                   _: Admin) -> dict[str, str]:
    remove_subscription(engine.store, name)
    return {"removed": name}
