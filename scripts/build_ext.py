#!/usr/bin/env python3
"""Compiles the agent's C accelerators next to their sources, for the interpreter
that runs this script (its headers, its extension suffix):

    build_ext.py                 # every module in EXTENSIONS, if its source is newer
    build_ext.py --out DIR SRC   # one source into DIR/<name>.so (the agent image)

Each module has a Python twin that runs where the module was not built (the code
that imports it says which); tests/unit compare the two on generated input. Run by
scripts/setup.sh; needs a C compiler ($CC, default gcc) and Python.h (python3-dev).
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = ["services/agent/pipeline/l7/_httpscan.c", "services/agent/datapath/_ringbuf.c"]
FLAGS = ["-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]


def build(src: Path, out: Path) -> None:
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        sys.exit(f"build_ext: no Python.h in {include}: install the interpreter's headers "
                 f"(Debian: python3-dev)")
    cc = os.environ.get("CC", "gcc")
    tmp = out.with_name(out.name + ".tmp")
    subprocess.run([cc, *FLAGS, f"-I{include}", str(src), "-o", str(tmp)], check=True)
    tmp.replace(out)  # a running agent keeps the old file's inode
    print(f"build_ext: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--out":
        src = Path(sys.argv[3])
        build(src, Path(sys.argv[2]) / (src.stem + ".so"))
        return
    if len(sys.argv) != 1:
        sys.exit(__doc__)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for rel in EXTENSIONS:
        src = ROOT / rel
        out = src.with_name(src.stem + suffix)
        newest = max(src.stat().st_mtime, Path(__file__).stat().st_mtime)
        if not out.exists() or out.stat().st_mtime < newest:
            build(src, out)


if __name__ == "__main__":
    main()
