"""What netbooting firmware fetches over HTTP (iPXE, UEFI HTTP boot).

No token, like TFTP: firmware has none to send. Where ``boot_networks`` is
set, only clients on those networks are served (docs/lab.md says what the
provisioning network can read). The files come from the boot root
(``pxe_root``), as :mod:`corral.bootres.netboot` lays it out.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

import ipaddress
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse, Response

from corral.api.callbacks import ApiError
from corral.api.deps import Services, ServicesDep
from corral.api.models import ErrorOut
from corral.bootres.netboot import served_ipxe, served_object

MAC = "^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"
NOT_HERE: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "Not from boot_networks."}}


async def boot_client(request: Request, services: ServicesDep) -> Services:
    """Only the provisioning network, where boot_networks says which it is."""
    allowed = services.boot_networks
    if allowed:
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or not any(address in n for n in allowed):
            raise ApiError(403, "forbidden", f"{host or 'this client'} is not on a network "
                           "allowed to netboot (boot_networks)")
    return services


def boot_root(services: Services) -> FsPath:
    """Raises: ApiError 404 where no boot root is configured."""
    if services.pxe_root is None:
        raise ApiError(404, "not_found", "netboot is not configured here (pxe_root)")
    return services.pxe_root


BootClient = Annotated[Services, Depends(boot_client)]

router = APIRouter(tags=["netboot"])


@router.get("/boot/ipxe/{mac}", response_class=Response,
            responses=NOT_HERE | {404: {"model": ErrorOut,
                                        "description": "No script for this MAC."}},
            summary="A board's iPXE script, by its MAC (aa:bb:cc:dd:ee:ff).")
def ipxe_script(mac: Annotated[str, Path(max_length=17, pattern=MAC)],
                services: BootClient) -> Response:
    script = served_ipxe(boot_root(services), mac)
    if script is None:
        raise ApiError(404, "not_found", f"no iPXE script for {mac}")
    return Response(script, media_type="text/plain; charset=utf-8",
                    headers={"Cache-Control": "no-store"})


@router.get("/boot/objects/{sha256}", response_class=FileResponse,
            responses=NOT_HERE | {404: {"model": ErrorOut,
                                        "description": "No such boot object."}},
            summary="A kernel, initrd or image a board's configuration names.")
def boot_object(sha256: Annotated[str, Path(pattern="^[0-9a-f]{64}$")],
                services: BootClient) -> FileResponse:
    path = served_object(boot_root(services), sha256)
    if path is None:
        raise ApiError(404, "not_found", f"no boot object {sha256}")
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})
