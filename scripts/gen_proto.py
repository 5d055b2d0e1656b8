"""Generate Python stubs from proto/ into webb/api/.

protoc writes imports like ``from flow import flow_pb2``; they are rewritten to
``webb.api.flow`` so the stubs live inside the shared package, while the .proto
file names (what reflection clients see) stay Hubble's.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "webb" / "api"
PACKAGES = ["flow", "relay", "observer", "peer", "admin", "stream"]


def main() -> int:
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    for pkg in PACKAGES:
        shutil.rmtree(OUT / pkg, ignore_errors=True)
    files = [str(p.relative_to(PROTO)) for pkg in PACKAGES for p in sorted((PROTO / pkg).glob("*.proto"))]
    rc = protoc.main(["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={OUT}",
                      f"--pyi_out={OUT}", f"--grpc_python_out={OUT}", *files])
    if rc != 0:
        return rc
    # Both `from flow import flow_pb2` and, for `import public`, `from flow.flow_pb2 import *`.
    pattern = re.compile(r"^from (%s)(\.\w+)? import " % "|".join(PACKAGES), re.M)
    for pkg in PACKAGES:
        (OUT / pkg / "__init__.py").touch()
        for f in (OUT / pkg).glob("*.py*"):
            text = f.read_text()
            f.write_text(pattern.sub(r"from webb.api.\1\2 import ", text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
