"""The history stream over HTTP: ``GET /api/v1/events``, Server-Sent Events.

What the stream holds, its order and where a reader resumes are
:mod:`corral.stream`'s; this route reads where a client starts (``after``,
or ``Last-Event-ID`` when it reconnects), its filters, and sends the frames.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from corral.api.deps import ServicesDep, Viewer
from corral.api.errors import ERRORS
from corral.errors import Unavailable
from corral.names import HISTORY_ID
from corral.stream import event_frames

router = APIRouter(tags=["events"])


@router.get("/api/v1/events", response_class=StreamingResponse,
            responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                       "description": "Server-Sent Events."}},
            summary="Every history row as it commits, in commit order (Server-Sent "
                    "Events).", operation_id="stream_events")
async def stream_events(
    services: ServicesDep,
    _: Viewer,
    after: Annotated[int | None, Query(ge=0, le=10**18, description=(
        "Start after this history id (0: from the oldest kept row); without it, "
        "from now. Last-Event-ID, when sent, wins."))] = None,
    kind: Annotated[list[str], Query(description="Only these machine kinds.")] = [],  # noqa: B006
    name: Annotated[list[str], Query(description="Only these machines.")] = [],  # noqa: B006
    state: Annotated[list[str], Query(description="Only rows entering these states.")
                     ] = [],  # noqa: B006
    event: Annotated[list[str], Query(description="Only these events.")] = [],  # noqa: B006
    source: Annotated[list[str], Query(description=(
        "Only these sources: callback, timeout, operation, operator."))] = [],  # noqa: B006
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", pattern=f"^({HISTORY_ID.body})?$",
        description="The id of the last event received, as the stream sent it; "
                    "empty is as if not sent.")] = None,
) -> StreamingResponse:
    """Each event's SSE ``id`` is its history id and its ``data`` the row
    as JSON (kind, name, from_state, to_state, event, source, actor,
    reason, at, payload). A reconnecting client sends ``Last-Event-ID`` and
    resumes exactly after that row: nothing lost, nothing twice. A
    ``: heartbeat`` comment comes after 15 s of silence."""
    tail = services.tail
    if not tail.ready:
        raise Unavailable("the event stream waits for the database; retry later")
    start = int(last_event_id) if last_event_id else after
    if start is None:
        start = await tail.current()
    filters = {"kind": kind, "name": name, "state": state, "event": event, "source": source}
    return StreamingResponse(
        event_frames(tail, after=start, filters=filters, heartbeat=services.events_heartbeat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
