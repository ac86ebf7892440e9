"""Generate the committed gRPC code from ``protos/`` (``make proto``).

``generate(out)`` writes into ``out``; the test that guards against stale code
generates into a temporary directory and compares.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

from corral.paths import PROJECT_ROOT

PROTOS = PROJECT_ROOT / "protos"
SOURCES = ("corral/mo/v1/host_version.proto",)


def generate(out: Path) -> list[Path]:
    """Generate Python modules for every proto under ``out``; returns the files."""
    include = str(files("grpc_tools").joinpath("_proto"))
    for source in SOURCES:
        code = protoc.main(["grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}",
                            f"--python_out={out}", f"--grpc_python_out={out}",
                            f"--pyi_out={out}", str(PROTOS / source)])
        if code != 0:
            raise SystemExit(f"protoc failed on {source}")
    return sorted(p for source in SOURCES
                  for p in (out / source).parent.glob(Path(source).stem + "_pb2*"))


if __name__ == "__main__":
    written = generate(PROJECT_ROOT / "src")
    print("\n".join(str(p.relative_to(PROJECT_ROOT)) for p in written), file=sys.stderr)
