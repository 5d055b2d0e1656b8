"""Runs every benchmark in bench/ one after the other (as root); each prints its figures.

usage: .venv/bin/python bench/run_all.py [name ...]   e.g. agent relay
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["agent", "policy", "l7", "relay", "metrics", "ui", "history", "protojson", "pipeline"]


def main() -> int:
    wanted = sys.argv[1:] or ORDER
    failed = []
    for name in wanted:
        script = HERE / f"{name}_bench.py"
        if not script.exists():
            print(f"no benchmark {name!r} ({script.name})", file=sys.stderr)
            failed.append(name)
            continue
        print(f"\n===== {script.name} =====", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
