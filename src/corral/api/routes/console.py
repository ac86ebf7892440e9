"""The operator console: static files, no build step (docs/console.md).

The page and its assets are served as they are in ``corral/api/console/``;
everything they show comes from the API itself, with the operator's token.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from corral.api.callbacks import ApiError

CONSOLE = FsPath(__file__).resolve().parents[1] / "console"

router = APIRouter(include_in_schema=False)


@router.get("/")
def console_page() -> FileResponse:
    return FileResponse(CONSOLE / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/console/{asset}")
def console_asset(asset: Annotated[str, Path(pattern=r"^[a-z]+\.(js|css)$")]) -> FileResponse:
    path = CONSOLE / asset
    if not path.is_file():
        raise ApiError(404, "not_found", f"no console asset {asset!r}")
    kind = "text/javascript" if asset.endswith(".js") else "text/css"
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})
