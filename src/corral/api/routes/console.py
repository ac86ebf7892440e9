"""The operator console: static files, no build step (docs/console.md).

The page and its assets are served as they are in ``corral/api/console/``;
everything they show comes from the API itself, with the operator's token.
They are served under :data:`CSP`: scripts, styles and connections from this
server only, nothing inline, in no frame (``Front`` adds ``nosniff`` and
``Referrer-Policy`` to every answer).

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from corral.api.callbacks import ApiError

CONSOLE = FsPath(__file__).resolve().parents[1] / "console"

# No inline script, style or event handler, no eval, no other origin: the
# console's own files and the API, which is all it uses.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP}

router = APIRouter(include_in_schema=False)


@router.get("/")
def console_page() -> FileResponse:
    return FileResponse(CONSOLE / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/console/{asset}")
def console_asset(asset: Annotated[str, Path(pattern=r"^[a-z]+\.(js|css)$")]) -> FileResponse:
    path = CONSOLE / asset
    if not path.is_file():
        raise ApiError(404, "not_found", f"no console asset {asset!r}")
    kind = "text/javascript" if asset.endswith(".js") else "text/css"
    return FileResponse(path, media_type=kind, headers=HEADERS)
