"""What a token may ask about itself (the console asks it at login).

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from fastapi import APIRouter

from corral.api.deps import AnyToken
from corral.api.errors import ERRORS

router = APIRouter(tags=["tokens"])


@router.get("/api/v1/whoami", responses=ERRORS, summary="The token's name and role.",
            operation_id="whoami")
def whoami(who: AnyToken) -> dict[str, str]:
    return {"name": who.name, "role": who.role}
